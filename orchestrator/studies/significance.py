"""The significance of a study's differences (plain numbers in, plain numbers out; see docs/studies.md).

* :func:`mean_interval`: a cell's mean and its confidence interval over the (checkpoint, seed)
  replicates: Student's t (mean +- t_{(1+c)/2, n-1} s / sqrt(n)) or a percentile bootstrap of
  the mean.
* :func:`paired_comparison`: a criterion against the reference over the same (checkpoint, seed,
  target) pairs: the mean difference with the same kind of interval, and the two-sided p-value
  of a Wilcoxon signed-rank test (scipy; exact for small samples without ties or zeros, zero
  differences dropped) or of a paired bootstrap (the differences centred on zero, resampled).
* :func:`average_ranks`: criteria ranked within each setting (1 = most accurate, ties share the
  mean rank), averaged; Friedman's test over the settings where every criterion finished, and
  the Nemenyi critical difference (Demsar 2006): two criteria whose average ranks differ by less
  are not significantly different at ``1 - confidence``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Interval", "Paired", "Ranks", "mean_interval", "paired_comparison", "average_ranks",
           "critical_difference"]


@dataclass(frozen=True)
class Interval:
    """A mean and its interval (``low``/``high`` None below two values)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class Paired:
    """A paired comparison: ``n`` pairs, the mean difference (criterion - reference), its
    interval, the test's two-sided p-value (None below two pairs) and the test's name."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    p_value: float | None
    test: str


@dataclass(frozen=True)
class Ranks:
    """Average ranks over ``blocks`` complete settings; Friedman's statistic and p-value and the
    critical difference (None with fewer than 3 criteria or 2 blocks)."""

    average: dict[str, float]
    blocks: int
    friedman_statistic: float | None
    friedman_p: float | None
    critical_difference: float | None


def _bootstrap_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)


def mean_interval(values: Sequence[float], *, confidence: float = 0.95, method: str = "t",
                  samples: int = 10000, seed: int = 0) -> Interval:
    """The mean of ``values`` and its ``confidence`` interval by ``method`` (t or bootstrap)."""
    from scipy import stats

    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return Interval(None, None, None, 0)
    mean = float(data.mean())
    if len(data) < 2:
        return Interval(mean, None, None, 1)
    if method == "t":
        half = float(stats.t.ppf((1 + confidence) / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
        return Interval(mean, mean - half, mean + half, len(data))
    if method == "bootstrap":
        means = _bootstrap_means(data, samples, seed)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(means, [tail, 100 - tail])
        return Interval(mean, float(low), float(high), len(data))
    raise ValueError(f"unknown interval method {method!r}; valid: t, bootstrap")


def paired_comparison(differences: Sequence[float], *, confidence: float = 0.95, interval: str = "t",
                      test: str = "wilcoxon", samples: int = 10000, seed: int = 0) -> Paired:
    """Mean of the paired ``differences``, its interval and the ``test``'s p-value (H0: no
    difference); every difference zero gives p = 1."""
    from scipy import stats

    data = np.asarray(differences, dtype=float)
    spread = mean_interval(data, confidence=confidence, method=interval, samples=samples, seed=seed)
    if len(data) < 2:
        return Paired(len(data), spread.mean, None, None, None, test)
    if not np.any(data != 0):
        p = 1.0
    elif test == "wilcoxon":
        p = float(stats.wilcoxon(data, alternative="two-sided").pvalue)
    elif test == "bootstrap":
        centred = _bootstrap_means(data - data.mean(), samples, seed)
        p = float((np.sum(np.abs(centred) >= abs(data.mean())) + 1) / (samples + 1))
    else:
        raise ValueError(f"unknown paired test {test!r}; valid: wilcoxon, bootstrap")
    return Paired(len(data), spread.mean, spread.low, spread.high, p, test)


def critical_difference(k: int, blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks: q_alpha sqrt(k (k + 1) / (6 N)), q_alpha
    the studentized range quantile (infinite degrees of freedom) over sqrt(2)."""
    from scipy import stats

    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6 * blocks))


def average_ranks(blocks: Sequence[Mapping[str, float]], criteria: Sequence[str], *,
                  confidence: float = 0.95) -> Ranks:
    """Rank ``criteria`` within every block (a setting: {criterion: accuracy}) that has all of
    them, higher accuracy first; average the ranks; Friedman's test and the critical difference."""
    from scipy import stats

    complete = [[float(block[c]) for c in criteria] for block in blocks if all(c in block for c in criteria)]
    if not complete:
        return Ranks({}, 0, None, None, None)
    table = np.asarray(complete)
    ranks = np.vstack([stats.rankdata(-row) for row in table])
    average = {c: float(r) for c, r in zip(criteria, ranks.mean(axis=0))}
    k, n = len(criteria), len(complete)
    if k < 3 or n < 2:
        return Ranks(average, n, None, None, None)
    if np.all(table == table[:, :1]):  # every criterion tied in every block: nothing to test
        statistic, p = 0.0, 1.0
    else:
        result = stats.friedmanchisquare(*table.T)
        statistic, p = float(result.statistic), float(result.pvalue)
    return Ranks(average, n, statistic, p, critical_difference(k, n, 1 - confidence))

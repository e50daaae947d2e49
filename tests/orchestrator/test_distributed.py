"""Statistics and Shapley estimates on Ray actors (orchestrator.distributed).

One Ray runtime per test session (``ray_session``, 2 CPUs) and one pool of two actors for this
module (each reserving half a CPU, so that a CLI run with one worker of its own fits next to
it). The tiny models (tests/tiny_models.py) and this module's crashing model are not importable
on the workers, so both modules are pickled by value while the pool lives.

Lost actors are real ones: :class:`CrashOnce` ends the process of the first worker that runs a
forward pass (``os._exit``, as a lost node would), so the scheduler has to notice the dead
actor, redo its shards on a fresh one and still merge every shard exactly once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from orchestrator import cli
from orchestrator.distributed import (
    DistributedShapley,
    ShardOptions,
    WorkerPool,
    distributed_shapley,
    distributed_stats,
)
from pruning.criteria import ScoringContext, create_criterion
from pruning.games import BlockMerge, GameSettings, LayerGame, ShapleyOptions, estimate_block, shapley_blocks
from pruning.structure import PruningSpace
from pruning.statistics import StatsOptions, collect_activation_stats
from tiny_models import TinyResNet

pytestmark = pytest.mark.slow

#: a block plan with several blocks per group: 8 permutations in antithetic pairs, 2 per block
PLAN = ShapleyOptions(max_permutations=8, batch_permutations=2, antithetic=True, truncation=0.02, batch_size=16)
SEED = 3


class CrashOnce(TinyResNet):
    """A TinyResNet whose first forward on a Ray worker ends that worker's process.

    Whichever worker creates ``marker`` first dies; the driver's forwards (its own pid) and every
    later forward run normally, so results equal the plain model's.
    """

    def __init__(self, marker: Path, like: torch.nn.Module) -> None:
        super().__init__()
        self.load_state_dict(like.state_dict())
        self.train(like.training)
        self.marker, self.driver = str(marker), os.getpid()

    def forward(self, x):
        # isinstance: torch.fx traces with proxies, and the traced graph must be the plain model's
        if isinstance(x, torch.Tensor) and os.getpid() != self.driver and self._claim():
            os._exit(1)
        return TinyResNet.forward(self, x)

    def _claim(self) -> bool:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


@pytest.fixture(scope="module")
def pool(ray_session):
    import tiny_models
    from ray import cloudpickle

    here = sys.modules[__name__]
    for module in (tiny_models, here):  # tests/ is not on the workers' path
        cloudpickle.register_pickle_by_value(module)
    try:
        with WorkerPool(2, cpus_per_worker=0.5) as p:
            yield p
    finally:
        for module in (tiny_models, here):
            cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(6)]


@pytest.fixture
def groups(tiny_resnet):
    return PruningSpace.build(tiny_resnet, torch.zeros(1, 1, 28, 28)).groups


@pytest.fixture(scope="module")
def baseline():
    """Results computed once and compared against by several tests (the model is deterministic)."""
    return {}


def _shapley_baseline(baseline, model, groups, batches, pool):
    if "shapley" not in baseline:
        shards = ShardOptions(pool=pool, progress=False, return_report=True)
        baseline["shapley"] = distributed_shapley(model, groups, batches, PLAN, shards, seed=SEED)
    return baseline["shapley"]


def assert_same_stats(a, b, exact_floats=False):
    assert a.config == b.config and a.layers.keys() == b.layers.keys()
    for name, x in a.layers.items():
        y = b.layers[name]
        for field, t in x.tensors().items():
            u = getattr(y, field)
            assert u is not None and t.dtype == u.dtype and t.shape == u.shape, (name, field)
            if t.is_floating_point() and not exact_floats:
                torch.testing.assert_close(u, t, rtol=1e-10, atol=1e-10, msg=f"{name}.{field}")
            else:  # counts, histograms, edges, sizes: exact
                assert torch.equal(t, u), (name, field)


def assert_same_estimates(a, b):
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name].values, b[name].values), name
        assert torch.equal(a[name].stderr, b[name].stderr), name
        assert (a[name].permutations, a[name].evaluations) == (b[name].permutations, b[name].evaluations)
        assert (a[name].v_full, a[name].v_empty) == (b[name].v_full, b[name].v_empty)


# --- the command line (before the module's pool exists; one worker of its own) -------------------


def test_cli_stats_with_a_worker(tmp_path, capsys, monkeypatch, ray_session):
    from dataclasses import asdict

    from pruning.structure import ModelSpec, save_checkpoint
    from pruning.data import FASHION_MNIST_ROOT, DataConfig
    from pruning.models import create_model

    if not (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file() and not (
        Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte"
    ).is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT}")
    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    checkpoint, out = tmp_path / "r20.pt", tmp_path / "stats.pt"
    data_config = asdict(DataConfig(name="fashion-mnist", calibration_size=128, train_subset=256, test_subset=64))
    save_checkpoint(checkpoint, create_model("resnet20", num_classes=10, in_channels=1),
                    ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"data": data_config}))
    code = cli.main(["stats", "--checkpoint", str(checkpoint), "--calibration-images", "64", "--out", str(out),
                     "--workers", "1", "--json", "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(stdout)
    assert data["workers"] == 1 and data["images"] == 64 and out.is_file()
    from pruning.statistics import ActivationStats

    state = ActivationStats.load(out)
    assert {int(s.n_images) for s in state.layers.values()} == {64}


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "-1"], "--workers"),
    (["--workers", "1", "--cpus-per-worker", "0"], "--cpus-per-worker"),
    (["--address", "auto"], "--address"),
])
def test_cli_bad_distributed_options(argv, needle, tmp_path, capsys):
    code = cli.main(["stats", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s.pt"), *argv])
    _, err = capsys.readouterr()
    assert code == cli.EXIT_BAD_INPUT
    assert err.startswith("error: ") and needle in err
    assert not (tmp_path / "s.pt").exists()


# --- statistics --------------------------------------------------------------------------------


def test_actor_stats_equal_in_process_stats(tiny_resnet, groups, batches, pool):
    # per-class sums too: one-batch shards see different largest labels, and merge padded
    reference = collect_activation_stats(tiny_resnet, groups, batches,
                                         StatsOptions(bins=16, chip=True, read_inputs=True, per_class=True))
    state, report = distributed_stats(tiny_resnet, groups, batches,
                                      StatsOptions(bins=16, chip=True, read_inputs=True, per_class=True),
                                      ShardOptions(pool=pool, shard_size=1, progress=False, return_report=True))
    assert any(key.endswith(":input") for key in state.layers)
    assert all(s.class_sum is not None for s in state.layers.values())
    assert_same_stats(reference, state)
    assert sorted(report.accepted) == list(range(6)) and report.shards == 6 and report.failures == 0
    assert report.started_workers in (0, 2)


def test_actor_stats_rank_only_the_first_images_as_in_process(tiny_resnet, groups, batches, pool):
    # 11 of 48 images: the limit ends inside the second 8-image batch; one batch per shard
    reference = collect_activation_stats(tiny_resnet, groups, batches, StatsOptions(rank_images=11, per_class=True))
    state = distributed_stats(tiny_resnet, groups, batches, StatsOptions(rank_images=11, per_class=True),
                              ShardOptions(pool=pool, shard_size=1, progress=False))
    assert_same_stats(reference, state)
    assert {int(s.n_rank_images) for s in state.layers.values() if s.rank_sum is not None} == {11}


def test_stats_killed_actor_loses_nothing(tiny_resnet, groups, batches, pool, tmp_path):
    reference = collect_activation_stats(tiny_resnet, groups, batches)
    crashing = CrashOnce(tmp_path / "crashed", like=tiny_resnet)
    state, report = distributed_stats(crashing, groups, batches,
                                      shards=ShardOptions(pool=pool, shard_size=1, progress=False, return_report=True))
    assert (tmp_path / "crashed").exists()
    assert report.failures == 1 and report.dispatched > report.shards  # the lost shard(s) ran again
    assert sorted(report.accepted) == list(range(6)) and len(set(report.accepted)) == len(report.accepted)
    assert report.duplicates == 0
    assert_same_stats(reference, state)  # a shard merged twice would double its counts


# --- Shapley -----------------------------------------------------------------------------------


def _blocks_in_process(model, groups, batches, options, seed):
    """What the actors compute, block by block in this process, merged in block order."""
    inputs, targets = options.game_batch(batches, seed)
    out = {}
    for group in groups:
        game = LayerGame(model, group, inputs, targets, GameSettings(value=options.value, mode=options.mode))
        plan = shapley_blocks(options, seed, group.name)
        merge = BlockMerge(len(plan), options.epsilon)
        for k, (count, block_seed) in enumerate(plan):
            merge.add(k, estimate_block(game, options, count, block_seed))
        out[group.name] = merge.estimate()
    return out


def test_shapley_same_seed_gives_identical_results(tiny_resnet, groups, batches, pool, baseline):
    first, report = _shapley_baseline(baseline, tiny_resnet, groups, batches, pool)
    again = distributed_shapley(tiny_resnet, groups, batches, PLAN, ShardOptions(pool=pool, progress=False), seed=SEED)
    assert_same_estimates(first, again)
    names = [g.name for g in groups]
    assert list(first) == names
    assert sorted(report.accepted) == sorted((n, k) for n in names for k in range(4))
    for name, est in first.items():
        assert est.permutations == 8 and est.values.shape == (tiny_resnet.get_submodule(name).out_channels,)
        assert torch.isfinite(est.values).all() and torch.isfinite(est.stderr).all()
    assert_same_estimates(first, _blocks_in_process(tiny_resnet, groups, batches, PLAN, SEED))
    other_seed = distributed_shapley(tiny_resnet, groups, batches, PLAN, ShardOptions(pool=pool, progress=False),
                                     seed=SEED + 1)
    assert not torch.equal(other_seed[names[0]].values, first[names[0]].values)


def test_shapley_does_not_depend_on_the_number_of_workers(tiny_resnet, groups, batches, pool, baseline):
    two, _ = _shapley_baseline(baseline, tiny_resnet, groups, batches, pool)
    one, report = distributed_shapley(tiny_resnet, groups, batches, PLAN,
                                      ShardOptions(pool=pool, workers=1, progress=False, return_report=True), seed=SEED)
    assert report.workers == 1
    assert_same_estimates(two, one)


def test_shapley_killed_actor_loses_nothing(tiny_resnet, groups, batches, pool, baseline, tmp_path):
    expected, _ = _shapley_baseline(baseline, tiny_resnet, groups, batches, pool)
    crashing = CrashOnce(tmp_path / "crashed", like=tiny_resnet)
    got, report = distributed_shapley(crashing, groups, batches, PLAN,
                                      ShardOptions(pool=pool, progress=False, return_report=True), seed=SEED)
    assert (tmp_path / "crashed").exists()
    assert report.failures == 1 and report.dispatched > report.shards
    every = {(g.name, k) for g in groups for k in range(4)}
    assert set(report.accepted) == every and len(report.accepted) == len(every)
    assert report.duplicates == 0
    assert_same_estimates(expected, got)


def test_convergence_stop_hands_out_fewer_blocks(tiny_resnet, groups, batches, pool):
    # converged as soon as there are two samples: two blocks (an antithetic pair is one sample)
    loose = dataclasses.replace(PLAN, max_permutations=64, epsilon=1e3)
    got, report = distributed_shapley(tiny_resnet, groups, batches, loose,
                                      ShardOptions(pool=pool, progress=False, return_report=True), seed=SEED)
    assert report.shards == 32 * len(groups)
    assert report.dispatched < report.shards
    for name, info in report.groups.items():
        assert info["converged"] and info["merged"] == 2 and got[name].permutations == 4
    # the stop is decided on the in-order merged prefix: the same result on another run
    again = distributed_shapley(tiny_resnet, groups, batches, loose, ShardOptions(pool=pool, workers=1, progress=False),
                                seed=SEED)
    assert_same_estimates(got, again)


def test_criterion_with_the_ray_estimator_scores_like_distributed_shapley(tiny_resnet, groups, batches, pool,
                                                                          baseline):
    base = create_criterion("snpfi", seed=SEED, max_permutations=8, batch_permutations=2, batch_size=16)
    estimator = DistributedShapley(ShardOptions(workers=2, pool=pool, progress=False))
    criterion = base.delegate_estimation(estimator)
    context = ScoringContext(calibration=batches)
    scores, sparsity = criterion.score_and_sparsity(tiny_resnet, groups, context)
    expected, _ = _shapley_baseline(baseline, tiny_resnet, groups, batches, pool)
    for g in groups:
        assert torch.equal(scores[g.name], expected[g.name].values.float())
        assert 0.0 <= sparsity[g.name] < 1.0
    assert criterion.name == "snpfi" and estimator.last_report.failures == 0
    assert estimator.last_report.shards == 4 * len(groups)

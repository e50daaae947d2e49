"""Per-channel measures of activations, each a closed form over a batch: histogram entropy
(FPEI, plug-in or Miller-Madow), the entropy of each map's spatial softmax, feature-map rank
(HRank), zero counts (APoZ) and the leave-one-out nuclear norms behind CHIP."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pruning.errors import InputError

__all__ = [
    "ENTROPY_ESTIMATORS",
    "check_estimator",
    "histogram_entropy",
    "map_softmax_entropy",
    "RANK_MAP_SIDE",
    "RANK_MAPS",
    "ranked_side",
    "rank_subsample",
    "batched_map_rank",
    "count_zeros",
    "leave_one_out_nuclear_norms",
]

#: estimators of a histogram's entropy: the plug-in (maximum-likelihood) one and Miller-Madow
ENTROPY_ESTIMATORS = ("plugin", "miller-madow")

#: maps with a side above this are ranked on a grid of evenly spaced rows and columns with at most
#: this many of each (:func:`rank_subsample`: 112x112 maps on 28x28, 56x56 ones on 28x28): an eigen-decomposition's cost grows with the cube of the side, and a
#: 112x112 map costs as much as ~50 of 32x32
RANK_MAP_SIDE = 32
#: the most maps of one observed output ranked per pass (at least one image's): a 960-channel
#: layer ranks 2 images, a 64-channel one 32; the ranks' cost then stays a fraction of the
#: forward pass on wide, cheap layers (depthwise convolutions) as well as narrow ones
RANK_MAPS = 2048

#: elements of float64 scratch per eigvalsh stack in the CHIP computation (about 128 MiB)
_CHIP_CHUNK_ELEMENTS = 1 << 24


def check_estimator(estimator: str) -> None:
    """Raise :class:`~pruning.errors.InputError` unless ``estimator`` is one of :data:`ENTROPY_ESTIMATORS`."""
    if estimator not in ENTROPY_ESTIMATORS:
        raise InputError(f"unknown entropy estimator {estimator!r}; valid: {', '.join(ENTROPY_ESTIMATORS)}")


def histogram_entropy(hist: torch.Tensor, *, estimator: str = "plugin") -> torch.Tensor:
    """Entropy (nats) of each row of a count matrix.

    ``"plugin"``: H = -sum_k p_k log p_k, p = h / sum h. ``"miller-madow"``: the plug-in value
    plus (K - 1) / (2 N), K the number of non-empty bins and N the row's count: the plug-in
    estimate is biased low by about that much (Miller 1955), and K varies between channels, so
    the bias would otherwise rank channels with many occupied bins too low.
    Empty bins contribute 0; an all-zero row has entropy 0 with either estimator.
    """
    check_estimator(estimator)
    counts = hist.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    entropy = -plogp.sum(-1)
    if estimator == "miller-madow":
        occupied = (counts > 0).sum(-1).to(torch.float64)
        n = total.squeeze(-1)
        entropy = entropy + torch.where(n > 0, (occupied - 1).clamp_min(0) / (2 * n.clamp_min(1)), 0.0)
    return entropy


def map_softmax_entropy(maps: torch.Tensor) -> torch.Tensor:
    """(B, C) entropies (nats) of the softmax over the H*W positions of each map of a (B, C, H, W) stack.

    H = -sum_j q_j log q_j with q = softmax(map): log(H*W) for a constant map (a dead channel
    included), lower the more the map's mass sits on a few positions. A 1x1 map has entropy 0.
    """
    # H = log Z - sum_j e_j d_j / Z with d = map - max(map), e = exp(d), Z = sum_j e_j: one exp
    # over the maps instead of log_softmax's and a second one for q (the pass's cost, measured)
    flat = maps.flatten(2)
    d = flat - flat.amax(-1, keepdim=True)
    e = d.exp()
    z = e.sum(-1)
    return z.log() - (e * d).sum(-1) / z


def ranked_side(side: int, max_side: int = RANK_MAP_SIDE) -> int:
    """The length of a map side of ``side`` positions on :func:`rank_subsample`'s grid."""
    return -(-side // -(-side // max_side))


def rank_subsample(maps: torch.Tensor, max_side: int) -> torch.Tensor:
    """A view of the (B, C, H, W) maps on every s-th row (s = ceil(H / ``max_side``)) and every
    t-th column (t = ceil(W / ``max_side``)), so that no side exceeds ``max_side`` (the maps
    themselves when both sides fit): a sub-matrix, whose rank is at most the map's, and equals
    min(rank, sides) for maps whose rows and columns are in general position. A strided view
    costs nothing; the ranks copy it once."""
    _, _, h, w = maps.shape
    return maps[:, :, :: -(-h // max_side), :: -(-w // max_side)]


def batched_map_rank(maps: torch.Tensor) -> torch.Tensor:
    """Ranks of a (B, C, H, W) activation's maps as a (B, C) tensor, in one batched call.

    The tolerance is ``torch.linalg.matrix_rank``'s default, max(H, W) * eps * sigma_max with
    eps of the maps' dtype, as HRank's reference implementation uses per map. Float64 maps go
    through ``matrix_rank`` itself. Below float64 the rank is the number of eigenvalues of the
    float64 Gram matrix G on the smaller side above tol^2 (sigma_i^2 = lambda_i), counted
    without an eigensolver: by Sylvester's law of inertia it is the number of positive
    eigenvalues of G - tol^2 I, read off its Bunch-Kaufman LDL^T factors (a 1x1 pivot counts when
    positive; a 2x2 pivot block is always indefinite and holds exactly one positive eigenvalue),
    about a quarter of an eigensolver's cost on small maps. sigma_max^2 is estimated by
    ||G e_p||^2 / G_pp, p the largest diagonal entry, which lies between G_pp and lambda_max
    (both bounds reached when one row or column dominates). The Gram entries of float32 values
    are exact products summed in float64, whose round-off (~1e-16 sigma_max^2) is far below the
    squared tolerance (~1e-11 sigma_max^2 for 28x28 float32 maps).
    """
    b, c, h, w = maps.shape
    flat = maps.reshape(b * c, h, w)
    if flat.dtype == torch.float64:
        return torch.linalg.matrix_rank(flat).reshape(b, c)
    a = flat.double()
    gram = a @ a.mT if h <= w else a.mT @ a
    diag = gram.diagonal(dim1=-2, dim2=-1)
    top, pivot = diag.max(-1)
    column = gram.gather(2, pivot[:, None, None].expand(-1, gram.shape[-1], 1))[..., 0]
    sigma_max_sq = column.square().sum(-1) / top.clamp_min(torch.finfo(torch.float64).tiny)
    tol_sq = (max(h, w) * torch.finfo(maps.dtype).eps) ** 2 * sigma_max_sq
    diag.sub_(tol_sq[:, None])  # G - tol^2 I, in place on the scratch Gram
    factors, pivots, _ = torch.linalg.ldl_factor_ex(gram)
    positive = (factors.diagonal(dim1=-2, dim2=-1) > 0) & (pivots > 0)
    return (positive.sum(-1) + (pivots < 0).sum(-1) // 2).reshape(b, c)


#: a float32 sum of 0/1 values is exact while every partial sum stays below 2**24
_EXACT_FLOAT32_COUNT = 2 ** 24


def count_zeros(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The number of exactly-zero entries of ``x`` over ``dims``, as int32 (one batch's count per
    channel is far below 2**31; the running counts are int64).

    The comparison writes float32 0/1 flags that are summed in float32, faster than summing a
    bool tensor into int32 (which converts it first) and exact while the counted entries are
    fewer than 2**24; past that the bool tensor is summed in int32."""
    n = 1
    for d in dims:
        n *= x.shape[d]
    if n < _EXACT_FLOAT32_COUNT:
        flags = torch.eq(x, 0, out=torch.empty(x.shape, dtype=torch.float32, device=x.device))
        return flags.sum(dims).to(torch.int32)
    return x.eq(0).sum(dims, dtype=torch.int32)


def leave_one_out_nuclear_norms(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nuclear norms of per-image feature matrices with each row zeroed in turn.

    ``features``: (B, C, N). Returns ``(full [B], without [B, C])`` where ``without[b, c]`` is
    ``||A_b with row c set to zero||_*``. Exact, without an SVD per channel of the (C, N)
    matrix: the nuclear norm is the sum of the square roots of the eigenvalues of a Gram matrix,
    taken on the smaller side:

    * C <= N: A A^T (C x C); zeroing row c zeroes row and column c of it;
    * C > N: A^T A (N x N); zeroing row c subtracts the rank-one term a_c a_c^T.

    The stacks of modified Gram matrices go through ``torch.linalg.eigvalsh`` a chunk of
    channels at a time (bounded scratch memory); computed in float64.
    """
    a = features.to(torch.float64)
    b, c, n = a.shape
    d = min(c, n)
    if c <= n:
        gram = a @ a.mT  # (B, C, C)
    else:
        gram = a.mT @ a  # (B, N, N)
    full = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(-1)
    without = torch.empty(b, c, dtype=torch.float64, device=a.device)
    img_step = max(1, _CHIP_CHUNK_ELEMENTS // (d * d))
    for i0 in range(0, b, img_step):
        g = gram[i0 : i0 + img_step]
        nb = g.shape[0]
        ch_step = max(1, _CHIP_CHUNK_ELEMENTS // (nb * d * d))
        for c0 in range(0, c, ch_step):
            cs = torch.arange(c0, min(c, c0 + ch_step), device=a.device)
            if c <= n:
                keep = 1.0 - F.one_hot(cs, c).to(torch.float64)  # (k, C)
                stack = g[:, None] * keep[None, :, :, None] * keep[None, :, None, :]
            else:
                rows = a[i0 : i0 + img_step, cs]  # (nb, k, N)
                stack = g[:, None] - rows[..., :, None] * rows[..., None, :]
            ev = torch.linalg.eigvalsh(stack)
            without[i0 : i0 + nb, cs] = ev.clamp_min(0).sqrt().sum(-1)
    return full, without

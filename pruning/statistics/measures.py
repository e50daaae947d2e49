"""Per-channel measures of activations, each a closed form over a batch: histogram entropy
(FPEI), feature-map rank (HRank) and the leave-one-out nuclear norms behind CHIP."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["histogram_entropy", "batched_map_rank", "leave_one_out_nuclear_norms"]

#: elements of float64 scratch per eigvalsh stack in the CHIP computation (about 128 MiB)
_CHIP_CHUNK_ELEMENTS = 1 << 24


def histogram_entropy(hist: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a count matrix: H = -sum_k p_k log p_k, p = h / sum h.

    Empty bins contribute 0; an all-zero row has entropy 0.
    """
    counts = hist.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return -plogp.sum(-1)


def batched_map_rank(maps: torch.Tensor) -> torch.Tensor:
    """Ranks of a (B, C, H, W) activation's maps as a (B, C) tensor, in one batched call.

    Uses ``torch.linalg.matrix_rank``'s default tolerance (max(H, W) * eps * sigma_max), as
    HRank's reference implementation does per map.
    """
    b, c, h, w = maps.shape
    return torch.linalg.matrix_rank(maps.reshape(b * c, h, w)).reshape(b, c)


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

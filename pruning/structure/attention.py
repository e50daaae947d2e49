"""Attention heads as prunable units, and the transformer widths that must stay.

A timm-style attention module (``qkv`` and ``proj`` Linear layers, ``num_heads`` and
``head_dim`` attributes; timm's ``Attention``) loses whole heads: a head's rows in each of the
q, k and v parts of ``qkv`` and its columns of ``proj`` go together, and ``num_heads`` (and
``attn_dim`` where the module has it) follows. Its group is the ``qkv`` output, with units of
``3 x head_dim`` channels. ``nn.MultiheadAttention`` (torchvision's ViT) cannot lose heads:
its fused projection requires the attention width to equal the token width; it keeps all its
heads, and the token embedding width (the residual stream) stays in every transformer, so only
the MLP hidden units of such a model prune.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from pruning.structure.groups import UnitLayout


@dataclass(frozen=True)
class HeadLayout:
    """A prunable attention module: its name, its ``qkv`` layer and the size of one head."""

    module: str
    qkv: str
    head_dim: int

    @property
    def units(self) -> UnitLayout:
        return UnitLayout(blocks=3, run=self.head_dim)


def _is_head_attention(module: nn.Module) -> bool:
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    return (
        isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
        and isinstance(heads, int) and isinstance(head_dim, int)
        and qkv.out_features == 3 * heads * head_dim == 3 * proj.in_features
    )


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every attention module of ``model``: timm-style ones and ``nn.MultiheadAttention``."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention) or _is_head_attention(module)
    }


def head_layouts(model: nn.Module, token_inputs: dict[str, torch.Tensor]) -> tuple[dict[str, HeadLayout], dict[str, str]]:
    """The attention modules whose heads prune (``{qkv layer: HeadLayout}``) and the others with
    the reason (``{module: reason}``). ``token_inputs``: each module's input from one forward;
    a module prunes heads when a copy with one head removed runs on it."""
    layouts, refused = {}, {}
    for name, module in attention_modules(model).items():
        if isinstance(module, nn.MultiheadAttention):
            refused[name] = ("nn.MultiheadAttention's fused in_proj ties the attention width to the token width; "
                             "its heads are kept")
            continue
        if module.num_heads < 2:
            refused[name] = "a single attention head is kept"
            continue
        layout = HeadLayout(module=name, qkv=f"{name}.qkv", head_dim=module.head_dim)
        if name not in token_inputs or not _runs_without_one_head(module, token_inputs[name]):
            refused[name] = f"{type(module).__name__} does not run with a head removed; its heads are kept"
            continue
        layouts[layout.qkv] = layout
    return layouts, refused


def _runs_without_one_head(module: nn.Module, tokens: torch.Tensor) -> bool:
    trial = copy.deepcopy(module).eval()
    keep = torch.arange(trial.head_dim, trial.num_heads * trial.head_dim)
    remove_heads(trial, keep)
    try:
        with torch.no_grad():
            out = trial(tokens)
    except Exception:  # any failure means this module's forward is not head-generic
        return False
    return isinstance(out, torch.Tensor) and out.shape[:-1] == tokens.shape[:-1]


def remove_heads(module: nn.Module, kept_attention: torch.Tensor) -> None:
    """Keep the attention channels ``kept_attention`` (whole heads, ascending indices into
    ``num_heads * head_dim``) of a timm-style attention module, in place."""
    width = module.num_heads * module.head_dim
    rows = torch.cat([kept_attention + part * width for part in range(3)])
    qkv, proj = module.qkv, module.proj
    qkv.weight = nn.Parameter(qkv.weight.detach()[rows].clone(), requires_grad=qkv.weight.requires_grad)
    if qkv.bias is not None:
        qkv.bias = nn.Parameter(qkv.bias.detach()[rows].clone(), requires_grad=qkv.bias.requires_grad)
    qkv.out_features = len(rows)
    proj.weight = nn.Parameter(proj.weight.detach()[:, kept_attention].clone(),
                               requires_grad=proj.weight.requires_grad)
    proj.in_features = len(kept_attention)
    module.num_heads = len(kept_attention) // module.head_dim
    if hasattr(module, "attn_dim"):
        module.attn_dim = len(kept_attention)


def attention_of(qkv_rows: torch.Tensor, width: int) -> torch.Tensor:
    """The attention channels (indices into ``width``) of kept ``qkv`` rows (whole heads)."""
    return qkv_rows[qkv_rows < width]

"""Token sets: a learnable latent array (Perceiver) and masked-modelling gather/scatter (MAE).

`mask` is the boolean `[B, N]` of `RandomMask` (l3m/data/generators.py), True = masked. That generator
masks exactly `round(ratio * N)` tokens in every sample, so the visible tokens of a batch form a
rectangle `[B, V, D]`: `KeepVisible` gathers them (in their original order) and `InsertMaskTokens`
puts them back at their positions with a learned token at every masked one, so
`InsertMaskTokens(KeepVisible(x, visible), mask)` is `x` with its masked tokens replaced.

RandomMask's second output `visible` (long `[B, V]`, the visible tokens' indices in increasing order)
carries the number of visible tokens in its shape, so KeepVisible gathers with it without reading any
values (one graph under torch.compile). KeepVisible also accepts the mask alone; it must then count the
visible tokens (a host sync, and a graph break under torch.compile). InsertMaskTokens takes that number
from its input's shape and never syncs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from l3m.model.init import init_weight_
from l3m.registry import register

_INITS = ("trunc_normal", "normal")


def _check_init(init: str) -> str:
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}; expected trunc_normal or normal")
    return init


@register("block")
class Latents(nn.Module):
    """A learned array of `num` tokens of width `dim`, repeated over the batch of its input: `[B, num, dim]`.

    The Perceiver's latent array: it cross-attends to the (many) input tokens, so the cost of the
    self-attention that follows depends on `num`, not on the input's length. The input only gives
    the batch size (and the dtype).
    """

    outputs = ("x",)
    shapes = "x: [B, ...] -> x: float[B, num, dim]"
    context_parallel = "whole"  # trait (l3m.traits): the latents are one sequence, not a slice of the input's
    context_parallel_note = "a latent array is not split over context-parallel ranks; use mesh.cp = 1"
    checks = (("num >= 1 and dim >= 1", "num ({num}) and dim ({dim}) must be positive"),)

    def __init__(self, num: int, dim: int, init_std: float = 0.02,
                 init: Literal["trunc_normal", "normal"] = "trunc_normal"):
        super().__init__()
        self.init, self.init_std = _check_init(init), init_std
        self.latents = nn.Parameter(torch.empty(num, dim))
        self.init_weights()

    def init_weights(self) -> None:
        init_weight_(self.latents, self.init, std=self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else self.latents.dtype
        return self.latents.to(dtype)[None].expand(x.shape[0], -1, -1)


def _check_mask(mask: torch.Tensor, who: str) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"{who} reads mask as bool [B, N] (True = masked), got {mask.dtype} {tuple(mask.shape)}")


def _check_counts(mask: torch.Tensor, who: str, visible: int | None = None) -> None:
    """Every sample hides as many tokens (and leaves `visible` visible): else a clear error. Skipped while
    torch.compile traces (a data-dependent branch) and on meta tensors (`l3m plan`)."""
    if torch.compiler.is_compiling() or mask.is_meta or not mask.shape[0]:
        return
    counts = (~mask).sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"{who}: samples have different numbers of visible tokens {counts.tolist()}; the mask must "
                         "hide as many tokens in every sample (as RandomMask does)")
    if visible is not None and int(counts[0]) != visible:
        raise ValueError(f"{who}: x has {visible} tokens, but the mask leaves {int(counts[0])} of {mask.shape[1]} "
                         "visible")


def _visible_count(mask: torch.Tensor, who: str) -> int:
    """The number of visible (False) positions, the same in every sample (a host sync)."""
    _check_mask(mask, who)
    if mask.is_meta:
        return mask.shape[1] // 4  # `l3m plan` on meta tensors: any count gives the FLOPs' order
    _check_counts(mask, who)
    return int((~mask[0]).sum()) if mask.shape[0] else mask.shape[1]


@register("block")
class KeepVisible(nn.Module):
    """Keeps the visible tokens, in order: x `[B, offset + N, D]` -> `[B, offset + V, D]`.

    Reads `visible` (long `[B, V]`, RandomMask's second output: no host sync) or `mask` (bool
    `[B, N]`, True = masked). The first `offset` tokens (a cls token, registers) are always kept and
    not covered by the mask. Every sample must hide as many tokens (RandomMask does).
    """

    outputs = ("x",)
    shapes = "@keep_visible"
    context_parallel = "whole"  # trait (l3m.traits): indexes positions of the whole sequence
    context_parallel_note = "masked-token selection indexes the whole sequence; use mesh.cp = 1"
    checks = (("offset >= 0", "offset ({offset}) must not be negative"),)

    def __init__(self, offset: int = 0):
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        head, body = x[:, :self.offset], x[:, self.offset:]
        if visible is not None:
            order = visible.to(device=x.device, dtype=torch.long)
        elif mask is None:
            raise ValueError("KeepVisible reads `visible` (RandomMask's indices of the visible tokens) or `mask`")
        else:
            if body.shape[:2] != mask.shape:
                raise ValueError(f"KeepVisible: mask {tuple(mask.shape)} does not cover the tokens of x "
                                 f"{tuple(x.shape)} after offset {self.offset}")
            v = _visible_count(mask, "KeepVisible")
            # stable sort: the visible positions first, each group in its original order
            order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :v]
        index = order.reshape(*order.shape, *([1] * (body.dim() - 2))).expand(-1, -1, *body.shape[2:])
        kept = torch.gather(body, 1, index)
        return torch.cat([head, kept], dim=1) if self.offset else kept


@register("block")
class InsertMaskTokens(nn.Module):
    """Puts the visible tokens back in place and a learned mask token at every masked position.

    x `[B, offset + V, dim]`, mask `[B, N]` -> `[B, offset + N, dim]`: the inverse of KeepVisible (the
    visible tokens are taken to be in increasing position order, as KeepVisible leaves them). The first
    `offset` tokens pass through in front. MAE's decoder input (add positions after it).
    """

    outputs = ("x",)
    shapes = "@insert_mask_tokens"
    context_parallel = "whole"  # trait (l3m.traits): places tokens at positions of the whole sequence
    context_parallel_note = "masked-token insertion places tokens in the whole sequence; use mesh.cp = 1"
    checks = (("offset >= 0", "offset ({offset}) must not be negative"),)

    def __init__(self, dim: int, offset: int = 0, init_std: float = 0.02,
                 init: Literal["trunc_normal", "normal"] = "trunc_normal"):
        super().__init__()
        self.offset, self.init, self.init_std = offset, _check_init(init), init_std
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim))
        self.init_weights()

    def init_weights(self) -> None:
        init_weight_(self.mask_token, self.init, std=self.init_std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        head, kept = x[:, :self.offset], x[:, self.offset:]
        _check_mask(mask, "InsertMaskTokens")
        (b, n), v = mask.shape, kept.shape[1]
        if kept.shape[0] != b or v > n:
            raise ValueError(f"InsertMaskTokens: x {tuple(x.shape)} (after offset {self.offset}) does not fit the "
                             f"mask {tuple(mask.shape)}")
        _check_counts(mask, "InsertMaskTokens", v)
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :v]  # where each kept token goes
        index = order[..., None].expand(-1, -1, kept.shape[-1])
        placed = kept.new_zeros(b, n, kept.shape[-1]).scatter(1, index, kept)
        token = self.mask_token.to(kept.dtype).expand(b, n, -1)
        out = torch.where(mask[..., None], token, placed)
        return torch.cat([head, out], dim=1) if self.offset else out

"""Moving axes around: Reshape (an einops-like pattern), Transpose, Permute, Flatten, Split. No parameters.

The shape rules (l3m/dsl/shapes/rules_tensor.py) compute every output's dims at lint, symbolically where
the input's are (`[B, 16, 64]` -> `[B, 4, 4, 64]`, `[B, N, 64]` -> `[B, N // 4, 4, 64]`).
"""

from __future__ import annotations

from math import prod

import torch
from torch import nn

from l3m.dsl.shapes.rules_tensor import SPLIT_MAX, parse_pattern
from l3m.registry import register


@register("block")
class Reshape(nn.Module):
    """Splits, merges and reorders axes by an einops-like pattern: `"B (H W) C -> B C H W", H = 4`.

    Why a pattern rather than a target shape such as `[B, 16, 64]`: it names every axis, so one line
    says what moves where (a reshape, a transpose and a flatten at once), and lint can check it
    against the input's dims without running anything: each side lists the same axis names, a
    parenthesised group is one dim (the product of its axes), `...` stands for any dims in the middle,
    and a group's axes need their sizes given (`H = 4`), all but one, which is the rest.
    """

    outputs = ("x",)
    shapes = "@reshape"

    def __init__(self, pattern: str, **sizes: int):
        super().__init__()
        self.pattern, self.sizes = pattern, dict(sizes)
        self.left, self.right = parse_pattern(pattern)  # ValueError for a bad pattern
        names = {n for g in self.left for n in g}
        unknown = sorted(set(sizes) - names)
        if unknown:
            raise ValueError(f"sizes {', '.join(unknown)} name no axis of the pattern {pattern!r}")
        for g in self.left:
            if len([n for n in g if n not in sizes]) > 1 and len(g) > 1:
                raise ValueError(f"group ({' '.join(g)}) of {pattern!r}: give the sizes of all its axes but one")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, int] = {}
        middle: list[int] = []
        axes: list[int] = []  # the input split into one dim per axis name
        i = 0
        for g in self.left:
            if g == ["..."]:
                k = x.dim() - (len(self.left) - 1)
                middle, i = list(x.shape[i:i + k]), i + k
                axes.extend(middle)
                continue
            d = x.shape[i]
            i += 1
            part = prod(self.sizes[n] for n in g if n in self.sizes)
            for n in g:
                env[n] = self.sizes.get(n, d // part if len(g) > 1 else d)
            axes.extend(env[n] for n in g)
        if i != x.dim():
            raise ValueError(f"Reshape {self.pattern!r}: x has {x.dim()} dims {tuple(x.shape)}")
        x = x.reshape(*axes)
        x = x.permute(*_positions(self.left, self.right, len(middle)))
        out: list[int] = []
        for g in self.right:
            out.extend(middle if g == ["..."] else [prod(env[n] for n in g)])
        return x.reshape(*out)

    def extra_repr(self) -> str:
        return repr(self.pattern) + "".join(f", {k}={v}" for k, v in self.sizes.items())


def _positions(left: list, right: list, n_middle: int) -> list[int]:
    """The permutation of the split-up input dims into the output side's order ("..." spans n_middle dims)."""
    flat_left = [n for g in left for n in g]
    start: dict[str, int] = {}
    pos = 0
    for n in flat_left:
        start[n] = pos
        pos += n_middle if n == "..." else 1
    out: list[int] = []
    for g in right:
        for n in g:
            out.extend(range(start[n], start[n] + n_middle) if n == "..." else [start[n]])
    return out


@register("block")
class Transpose(nn.Module):
    """Swaps two dims (`dim0`, `dim1`, negative from the end): `[B, N, D] -> [B, D, N]` by default."""

    outputs = ("x",)
    shapes = "@transpose"

    def __init__(self, dim0: int = 1, dim1: int = 2):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


@register("block")
class Permute(nn.Module):
    """Reorders all dims: output dim i is input dim `dims[i]` (`[0, 2, 1]`: `[B, N, D] -> [B, D, N]`)."""

    outputs = ("x",)
    shapes = "@permute"

    def __init__(self, dims: list[int]):
        super().__init__()
        if sorted(d % len(dims) for d in dims) != list(range(len(dims))):
            raise ValueError(f"dims {dims} is not a permutation")
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


@register("block")
class Flatten(nn.Module):
    """Merges dims `start`..`end` (inclusive, negative from the end) into one: `[B, C, H, W] -> [B, C * H * W]`."""

    outputs = ("x",)
    shapes = "@flatten"

    def __init__(self, start: int = 1, end: int = -1):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start, self.end)

    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}"


@register("block")
class Split(nn.Module):
    """Cuts dim `axis` into parts of `sizes` (one may be -1: the rest), in outputs x0, x1, ... in order.

    `Split(sizes = [1, -1], axis = 1) x -> cls, patches`. Bind one output per size (at most 8).
    """

    outputs = ("x0", "x1") + tuple(f"x{i}?" for i in range(2, SPLIT_MAX))
    shapes = "@split"

    def __init__(self, sizes: list[int], axis: int = -1):
        super().__init__()
        if not 2 <= len(sizes) <= SPLIT_MAX:
            raise ValueError(f"Split makes 2 to {SPLIT_MAX} parts, not {len(sizes)} (sizes {sizes})")
        if sizes.count(-1) > 1 or any(s < -1 or s == 0 for s in sizes):
            raise ValueError(f"sizes {sizes} must be positive, with at most one -1 (the rest)")
        self.sizes, self.axis = list(sizes), axis

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n = x.shape[self.axis]
        rest = n - sum(s for s in self.sizes if s != -1)
        sizes = [rest if s == -1 else s for s in self.sizes]
        if rest < (1 if -1 in self.sizes else 0) or sum(sizes) != n:
            raise ValueError(f"Split sizes {self.sizes} do not cut dim {self.axis} of x {tuple(x.shape)}")
        parts = torch.split(x, sizes, dim=self.axis)
        return tuple(parts) + (None,) * (SPLIT_MAX - len(parts))

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, axis={self.axis}"

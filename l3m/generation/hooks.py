"""Fitting a built model with the cache while it generates, and taking it off after.

Three things learn where the running tokens sit: each causal self-attention gets a `LayerCache`
(`Attention.kv_cache`), and the position sources (1-D RoPE tables, position tables) are swapped in
place for versions that read each sequence's positions from the `DecodeState`. Everything is put
back on exit, so the model trains, evaluates and saves as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from l3m.generation.cache import DecodeState, LayerCache
from l3m.model.blocks.attention import Attention
from l3m.model.blocks.embeddings import PosEmbed, RotaryEmbedding


class PlacedRotary(nn.Module):
    """A RotaryEmbedding's tables at each sequence's own positions: `[B, n, head_dim]`."""

    def __init__(self, inner: RotaryEmbedding, state: DecodeState) -> None:
        super().__init__()
        self.inner, self.state = inner, state

    def forward(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.state.positions().to(self.inner.inv_freq.device, torch.float32)
        angles = pos[..., None] * self.inner.inv_freq.float()
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


class PlacedTable(nn.Module):
    """A PosEmbed (offset 0) that adds the rows of each sequence's own positions."""

    def __init__(self, inner: PosEmbed, state: DecodeState) -> None:
        super().__init__()
        self.inner, self.state = inner, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.state.positions().to(x.device)
        if int(pos.max()) >= self.inner.num:
            raise ValueError(f"the sequence is longer than the model's {self.inner.num} positions "
                             "(shorten the prompt or --max-new-tokens)")
        return x + self.inner.pos[0][pos].to(x.dtype)


@contextlib.contextmanager
def installed(root: nn.Module, state: Any, cache: Callable[[Any], Any],
              placed: Mapping[type, Callable[[Any, Any], nn.Module]]) -> Iterator[None]:
    """Within `root`: a `cache(state)` on each causal self-attention and, for each module of a type in
    `placed`, its stand-in reading positions from `state`; everything put back on exit."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    cached: list[Attention] = []
    try:
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                make = placed.get(type(child))
                if make is not None:
                    swapped.append((parent, name, child))
                    setattr(parent, name, make(child, state))
        for m in root.modules():
            if isinstance(m, Attention) and m.causal and not m.cross:
                m.kv_cache = cache(state)
                cached.append(m)
        yield
    finally:
        for m in cached:
            del m.kv_cache  # back to the class's None
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


def decoding(model: nn.Module, state: DecodeState) -> contextlib.AbstractContextManager[None]:
    """`model` with a fresh cache per causal self-attention and positions read from `state`."""
    return installed(model, state, LayerCache, {RotaryEmbedding: PlacedRotary, PosEmbed: PlacedTable})

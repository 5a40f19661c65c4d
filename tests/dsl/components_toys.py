"""Toy components and blocks for the component/default tests: plain classes (no torch), registered while
a test module runs and removed after (`registered`), so the registry's other tests never see them."""

from __future__ import annotations

import contextlib
from typing import Literal

from l3m import registry
from l3m.interfaces import AttentionLayer, Norm, Positional, use


class LRope(Positional):
    """A toy 1-D position encoding."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        pass


class LRope2d(Positional):
    """A toy 2-D position encoding."""

    def __init__(self, head_dim: int, grid: int = 0, base: float = 100.0):
        pass


class LNorm(Norm):
    outputs = ("x",)

    def __init__(self, dim: int, eps: float = 1e-6):
        pass

    def forward(self, x):
        return x


class LAttention(AttentionLayer):
    outputs = ("x",)

    def __init__(self, dim: int, heads: int, pos: Positional | None = None, dropout: float = 0.0,
                 window: int | None = None):
        pass

    def forward(self, x):
        return x


_ATTENTION = use("LAttention")


class LStack:
    outputs = ("x",)

    def __init__(self, dim: int, depth: int = 2, attn: AttentionLayer | None = _ATTENTION,
                 norm: Norm | Literal["layernorm", "rmsnorm"] = "layernorm", act: str = "gelu"):
        pass

    def forward(self, x):
        return x


TOYS = (("component", LRope), ("component", LRope2d), ("block", LNorm), ("block", LAttention), ("block", LStack))


@contextlib.contextmanager
def registered():
    for kind, cls in TOYS:
        registry.register(kind)(cls)
    try:
        yield
    finally:
        for kind, cls in TOYS:
            registry._REGISTRY[kind].pop(cls.__name__, None)
        registry._version += 1


HEAD = "l3m 1\ndata { train: Synthetic() -> x, target }\n"

"""Elementwise blocks between keys: residual adds, products, activations. None has parameters."""

from __future__ import annotations

import functools
import operator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from l3m.registry import register


class _Combine(nn.Module):
    """Combines any number of keys elementwise with the class's `op`, broadcasting as torch does.

    Lint checks that the inputs broadcast (dims aligned from the right, each pair equal or 1).
    """

    outputs = ("x",)
    shapes = "@broadcast"
    context_parallel = "local"  # trait (l3m.traits): elementwise, runs on a slice of the sequence as it is
    op = staticmethod(operator.add)

    def __init__(self):
        super().__init__()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if not xs:
            raise ValueError(f"{type(self).__name__} needs at least one input")
        return functools.reduce(self.op, xs)


@register("block")
class Add(_Combine):
    """Sums any number of keys (a residual add: `x, h -> x`), broadcasting as torch does."""

    op = staticmethod(operator.add)


@register("block")
class Mul(_Combine):
    """Multiplies any number of keys elementwise (a gate: `x, g -> x`), broadcasting as torch does."""

    op = staticmethod(operator.mul)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


@register("block")
class Activation(nn.Module):
    """An elementwise nonlinearity: `fn` is gelu, gelu_tanh, relu, silu, tanh or sigmoid."""

    outputs = ("x",)
    shapes = "x: float[...] -> x: float[...]"
    context_parallel = "local"  # trait (l3m.traits): elementwise, runs on a slice of the sequence as it is

    def __init__(self, fn: Literal["gelu", "gelu_tanh", "relu", "silu", "tanh", "sigmoid"] = "gelu"):
        super().__init__()
        if fn not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {fn!r}; expected one of {', '.join(_ACTIVATIONS)}")
        self.fn = fn
        self._fn = _ACTIVATIONS[fn]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return f"fn={self.fn}"

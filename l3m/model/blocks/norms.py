"""Normalisation layers; both can compute in float32 under bf16 training."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from l3m.interfaces import Norm
from l3m.registry import register

NormKind = Literal["layernorm", "rmsnorm"]


@register("block")
class LayerNorm(nn.Module, Norm):
    """LayerNorm with its own init; `fp32` normalises in float32 and casts back."""

    outputs = ("x",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "x: float[..., dim] -> x: float[..., dim]"

    def __init__(self, dim: int, eps: float = 1e-6, fp32: bool = False, bias: bool = True):
        super().__init__()
        self.dim, self.eps, self.fp32 = dim, eps, fp32
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32 and (x.dtype != torch.float32 or self.weight.dtype != torch.float32):
            w = self.weight.float()
            b = self.bias.float() if self.bias is not None else None
            return F.layer_norm(x.float(), (self.dim,), w, b, self.eps).type_as(x)
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, fp32={self.fp32}"


@register("block")
class RMSNorm(nn.Module, Norm):
    """Root-mean-square norm (no centring, no bias); always computed in float32."""

    outputs = ("x",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "x: float[..., dim] -> x: float[..., dim]"

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(kind: Any, dim: int, eps: float = 1e-6, fp32: bool = False) -> nn.Module:
    """A norm by name ("none" gives an Identity), or a `Norm` component (a Factory or `use(...)`)
    built with this width, eps and fp32 as its host's context (its own arguments win)."""
    if not isinstance(kind, str):
        from l3m.model.components import as_factory

        return as_factory(kind)(dim=dim, eps=eps, fp32=fp32)
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps, fp32=fp32)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected layernorm, rmsnorm or none")

"""Small shared layers: the initialisable Linear, Concat, DropPath, and TP-plan collection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l3m.model.init import InitStyle, check_style, init_linear_
from l3m.registry import register


@register("block")
class Linear(nn.Linear):
    """A linear projection that knows its own init style (and is a real `nn.Linear`, so the
    tensor-parallel styles accept it).

    `init_depth > 0` marks the output projection of a residual branch in an `init_depth`-layer
    network (scaled down under "fan_in_depth").
    """

    outputs = ("x",)
    shapes = "x: float[..., in_features] -> x: float[..., out_features]"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.init = check_style(init)
        self.init_std = init_std
        self.init_depth = init_depth
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_(self, self.init, std=self.init_std, depth=self.init_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@register("block")
class Concat(nn.Module):
    """Concatenates any number of token sequences along the token dimension (dim 1)."""

    outputs = ("x",)
    shapes = "@concat"  # [B, N_i, D] each -> [B, sum N_i, D]

    def __init__(self):
        super().__init__()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if not xs:
            raise ValueError("Concat needs at least one input")
        return torch.cat(xs, dim=1)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def collect_tp_plan(module: nn.Module, prefix: str = "") -> dict:
    """The tensor-parallel plan of `module` and everything below it, with dotted names.

    A module that defines `tp_plan()` answers for its whole subtree; modules without one are
    searched through. Names are relative to `module` (prefixed by `prefix`).
    """
    plan: dict = {}
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if callable(getattr(child, "tp_plan", None)):
            for sub, style in child.tp_plan().items():
                plan[f"{path}.{sub}" if sub else path] = style
        else:
            plan.update(collect_tp_plan(child, prefix=f"{path}."))
    return plan

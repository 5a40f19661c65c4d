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
    network (scaled down under "fan_in_depth"). `share` names another Linear block whose weight and
    bias this one uses (l3m.model.sharing).
    """

    outputs = ("x",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    float8 = True  # trait (l3m.dist.float8): a plain linear map, so it may train as torchao's Float8Linear
    shapes = "x: float[..., in_features] -> x: float[..., out_features]"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
        share: str = "",
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.init = check_style(init)
        self.init_std = init_std
        self.init_depth = init_depth
        self.share = share  # another Linear whose parameters this one uses (the builder ties them)
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_(self, self.init, std=self.init_std, depth=self.init_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@register("block")
class Concat(nn.Module):
    """Concatenates any number of keys along `axis` (default 1: the tokens of `[B, N, D]` sequences).

    Every other dim must agree; lint checks them and sums the axis (symbolically: `N + 1`).
    """

    outputs = ("x",)
    shapes = "@concat_axis"  # [B, N_i, D] each -> [B, sum N_i, D] for axis 1

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if not xs:
            raise ValueError("Concat needs at least one input")
        return torch.cat(xs, dim=self.axis)


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

    A module with the `tp_plan` trait (`l3m.traits`: a method, or a dict declared on the class or at
    registration) answers for its whole subtree; modules without one are searched through. Named
    styles ("colwise", ...) become torch's. Names are relative to `module` (prefixed by `prefix`).
    """
    from l3m.dist.tp_styles import parallel_style

    plan: dict = {}
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        own = getattr(child, "tp_plan", None)
        if own is not None:
            for sub, style in (own() if callable(own) else own).items():
                plan[f"{path}.{sub}" if sub else path] = parallel_style(style, f"{path} ({type(child).__name__})")
        else:
            plan.update(collect_tp_plan(child, prefix=f"{path}."))
    return plan

"""Feed-forward networks: the plain MLP and the gated (GLU) variants used by transformers."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from l3m.interfaces import FeedForward
from l3m.model.blocks.layers import Linear
from l3m.model.init import InitStyle
from l3m.registry import register

_ACTS = {"gelu": F.gelu, "silu": F.silu}


def mlp_hidden(dim: int, mlp_ratio: float = 4.0, glu: bool = False, multiple_of: int = 256) -> int:
    """The hidden size for a ratio: `int(ratio*dim)`, or for GLUs two thirds of it (same
    parameter count) rounded up to a multiple of `multiple_of` (1024 -> 2816, 768 -> 2048)."""
    if not glu:
        return int(mlp_ratio * dim)
    h = int(2 * mlp_ratio * dim / 3)
    return multiple_of * math.ceil(h / multiple_of)


@register("block")
class MLP(nn.Module, FeedForward):
    """`w2(act(w1 x))`, or with `glu` the gated `w2(act(w1 x) * w3 x)` (SwiGLU for act="silu").

    `hidden` defaults as a Transformer's: `mlp_ratio * dim`, for a GLU two thirds of it rounded up
    to `multiple_of` (see `mlp_hidden`).
    """

    outputs = ("x",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "@mlp"  # out_dim defaults to dim

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        out_dim: int | None = None,
        act: Literal["gelu", "silu"] = "gelu",
        bias: bool = True,
        glu: bool = False,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
        mlp_ratio: float = 4.0,
        multiple_of: int = 256,
    ):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; expected gelu or silu")
        hidden = hidden or mlp_hidden(dim, mlp_ratio, glu, multiple_of)
        self.act = act
        # "fan_in_depth_scaled" (ml-l3m's) scales every weight by the network's depth, not just `w2`.
        d = init_depth if init == "fan_in_depth_scaled" else 0
        self.w1 = Linear(dim, hidden, bias=bias, init=init, init_std=init_std, init_depth=d)
        self.w3 = Linear(dim, hidden, bias=bias, init=init, init_std=init_std, init_depth=d) if glu else None
        self.w2 = Linear(hidden, out_dim or dim, bias=bias, init=init, init_std=init_std, init_depth=init_depth)

    def tp_plan(self) -> dict[str, ParallelStyle]:
        plan: dict[str, ParallelStyle] = {"w1": ColwiseParallel(), "w2": RowwiseParallel()}
        if self.w3 is not None:
            plan["w3"] = ColwiseParallel()
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _ACTS[self.act](self.w1(x))
        if self.w3 is not None:
            h = h * self.w3(x)
        return self.w2(h)


class _Gated(MLP):
    """A gated feed-forward `w2(act(w1 x) * w3 x)` whose activation is the class's `act_name`."""

    act_name = "silu"

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        out_dim: int | None = None,
        bias: bool = False,
        mlp_ratio: float = 4.0,
        multiple_of: int = 256,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        init_depth: int = 0,
    ):
        super().__init__(dim, hidden, out_dim, act=self.act_name, bias=bias, glu=True, init=init,
                         init_std=init_std, init_depth=init_depth, mlp_ratio=mlp_ratio, multiple_of=multiple_of)


@register("block")
class SwiGLU(_Gated):
    """The gated feed-forward `w2(silu(w1 x) * w3 x)` (Llama's); no biases unless `bias`."""

    act_name = "silu"


@register("block")
class GeGLU(_Gated):
    """The gated feed-forward `w2(gelu(w1 x) * w3 x)`; no biases unless `bias`."""

    act_name = "gelu"

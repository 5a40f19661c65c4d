"""A worked example of an extension: two blocks a `.l3m` file uses after `extension "residual_mlp"`.

`ResidualMLP` declares everything at its registration (shape rule, argument checks, tensor-parallel plan,
context-parallel trait); `MLPStack` declares its shape rule in the class body instead and names its
repeated layers (`layer_lists`), which activation checkpointing, per-layer compile and FSDP then wrap.
`l3m lint` reads both from this source without importing it (see docs/blocks.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from l3m import register
from l3m.interfaces import Norm
from l3m.model.blocks.layers import Linear
from l3m.model.blocks.norms import make_norm


@register(
    "block",
    shapes="x: float[B, N, dim] -> x: float[B, N, dim]",
    checks=[
        ("hidden >= dim", "hidden ({hidden}) must be at least dim ({dim})"),
        ("init_scale > 0", "init_scale ({init_scale}) must be positive"),
    ],
    tp_plan={"w1": "colwise", "w2": "rowwise"},  # hidden units split over tensor-parallel ranks
    context_parallel="local",  # token-wise: runs on a slice of the sequence as it is
)
class ResidualMLP(nn.Module):
    """`x + scale * w2(gelu(w1(norm(x))))`, with a learned per-channel `scale` (LayerScale) that starts
    at `init_scale`."""

    outputs = ("x",)

    def __init__(self, dim: int, hidden: int, init_scale: float = 0.1,
                 norm: Norm | Literal["layernorm", "rmsnorm"] = "layernorm"):
        super().__init__()
        self.init_scale = init_scale
        self.norm = make_norm(norm, dim)  # a name, or a component: `norm = RMSNorm(eps = 1e-5)`
        self.w1 = Linear(dim, hidden)  # l3m's Linear initialises itself (its own init_weights)
        self.w2 = Linear(hidden, dim)
        self.scale = nn.Parameter(torch.empty(dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Fill this module's own tensors (not its children's): l3m calls it after allocating the model."""
        nn.init.constant_(self.scale, self.init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.w2(nn.functional.gelu(self.w1(self.norm(x))))


@register("block", context_parallel="local", layer_lists=("mlps",))
class MLPStack(nn.Module):
    """`depth` ResidualMLPs, one after another."""

    outputs = ("x",)
    shapes = "x: float[B, N, dim] -> x: float[B, N, dim]"
    checks = (("depth >= 1", "depth ({depth}) must be at least 1"),)

    def __init__(self, dim: int, hidden: int, depth: int = 2, init_scale: float = 0.1,
                 norm: Norm | Literal["layernorm", "rmsnorm"] = "layernorm"):
        super().__init__()
        # A component (`norm = RMSNorm(eps = 1e-5)`) arrives as a Factory: each layer builds its own.
        self.mlps = nn.ModuleList(ResidualMLP(dim, hidden, init_scale, norm) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mlp in self.mlps:
            x = mlp(x)
        return x

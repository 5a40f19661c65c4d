"""Parameter-efficient fine-tuning parts: LoRA on attention projections, and bottleneck adapters.

`default Attention(lora = Lora(rank = 8))` adds low-rank updates to the query, key, value and output
projections of every attention; `default Transformer(adapter = Adapter(hidden = 32))` puts a bottleneck
on the output of every layer's attention and feed-forward branch (ml-l3m's `BlockWithAdapter`). A model
with either part trains only them (l3m.model.adapters), and `l3m export` merges LoRA into the weights.

LoRA follows loralib (Hu et al. 2021), which ml-l3m's `LoraAttention` uses: a projection `W x + b` becomes
`W x + b + (alpha / rank) * B A x` for each enabled part of its output (a `MergedLinear`), with A
kaiming-uniform (a = sqrt(5)) and B zero, so a fresh LoRA leaves the model's function unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from l3m.interfaces import BranchAdapter, LinearAdapter
from l3m.model.blocks.layers import Linear
from l3m.model.init import InitStyle
from l3m.registry import register

_ACTS = {"gelu": F.gelu, "silu": F.silu}


class LoraLinear(Linear):
    """A Linear plus a LoRA update of some parts of its output; the base weight and bias keep their names.

    The output is `groups` repetitions of the parts in order, a part of size s covering `s * width`
    features (an attention's fused qkv: per key/value group `[q_1 .. q_rep, k, v]`, each `head_dim` wide).
    Each enabled part p has its own `A_p [rank, in]` and `B_p [groups * s * width, rank]`; as in loralib's
    MergedLinear they are stacked into `lora_A [rank * parts, in]` and `lora_B [rows, rank]`, part after part.
    """

    float8 = False  # trait (l3m.dist.float8): its low-rank path is not a plain linear map

    def __init__(self, base: Linear, sizes: Sequence[int], enabled: Sequence[bool], width: int,
                 rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # not Linear.__init__: the base's own tensors are kept, not new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.init, self.init_std, self.init_depth, self.share = base.init, base.init_std, base.init_depth, base.share
        per_group = sum(sizes) * width
        if per_group <= 0 or self.out_features % per_group:
            raise ValueError(f"LoRA parts {list(sizes)} x {width} do not tile {self.out_features} outputs")
        self.groups = self.out_features // per_group
        self.sizes, self.enabled, self.width = tuple(sizes), tuple(bool(e) for e in enabled), width
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        rows = sum(self.groups * s * width for s, on in zip(self.sizes, self.enabled) if on)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank * sum(self.enabled), self.in_features, **like))
        self.lora_B = nn.Parameter(torch.empty(rows, rank, **like))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._init_lora()  # as Linear initialises itself when built (the base keeps its values)

    def init_weights(self) -> None:
        super().init_weights()
        self._init_lora()

    def tp_problem(self, tp: int) -> str | None:
        """Trait (l3m.traits): a column/row shard of the base weight would leave A and B whole."""
        return "has LoRA updates, which tensor parallelism does not split: use mesh.tp = 1" if tp > 1 else None

    def _init_lora(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def _split_B(self, lora_B: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return lora_B.split([self.groups * s * self.width for s, on in zip(self.sizes, self.enabled) if on])

    def _assemble(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        """The enabled parts' `[..., groups * s * width]` updates placed in the full `[..., out]` layout."""
        if self.groups == 1 and all(self.enabled):
            return torch.cat(list(chunks), dim=-1) if len(chunks) > 1 else chunks[0]
        first, lead = chunks[0], chunks[0].shape[:-1]
        given = iter(chunks)
        pieces = [next(given).unflatten(-1, (self.groups, s * self.width)) if on
                  else first.new_zeros(*lead, self.groups, s * self.width)
                  for s, on in zip(self.sizes, self.enabled)]
        return torch.cat(pieces, dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        low = F.linear(self.lora_dropout(x), self.lora_A).split(self.rank, dim=-1)
        update = self._assemble([F.linear(h, b) for h, b in zip(low, self._split_B(self.lora_B))])
        return out + update * self.scaling

    def delta_weight(self, lora_A: torch.Tensor | None = None, lora_B: torch.Tensor | None = None) -> torch.Tensor:
        """`scaling * B A` placed as `[out, in]`: what merging adds to the weight (of the given A, B, or
        this module's own)."""
        a = self.lora_A if lora_A is None else lora_A
        b = self.lora_B if lora_B is None else lora_B
        cols = [(bp @ ap).T for ap, bp in zip(a.split(self.rank), self._split_B(b))]  # [in, rows of part]
        return self._assemble(cols).T * self.scaling


@register("component")
class Lora(LinearAdapter):
    """LoRA for an attention's projections: `Attention(lora = Lora(rank = 8))`.

    `q`, `k`, `v` choose the parts of the query/key/value projections that get an update (ml-l3m's
    `qkv_flags`), `proj` the output projection (ml-l3m adapts it when q, k and v all are: write
    `proj = false` to leave it, as it does for partial flags). `alpha`: the update is scaled by
    `alpha / rank` (loralib's `lora_alpha`, default 1 as there); `dropout` applies to the update's input.
    """

    def __init__(self, rank: int = 8, alpha: float = 1.0, dropout: float = 0.0, q: bool = True, k: bool = True,
                 v: bool = True, proj: bool = True):
        if rank < 1:
            raise ValueError(f"rank ({rank}) must be at least 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout ({dropout}) must be in [0, 1)")
        if not (q or k or v or proj):
            raise ValueError("Lora adapts nothing: q, k, v and proj are all false")
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.flags = {"q": q, "k": k, "v": v, "proj": proj}

    def wrap(self, linear: Linear, parts: Sequence[tuple[str, int]], width: int) -> Linear:
        """`linear` with LoRA on the parts this Lora enables (`parts`: (name, size in `width`s) in output
        order); `linear` itself when it enables none of them."""
        enabled = [self.flags[name] for name, _ in parts]
        if not any(enabled):
            return linear
        return LoraLinear(linear, [s for _, s in parts], enabled, width, self.rank, self.alpha, self.dropout)

    def __repr__(self) -> str:
        flags = ", ".join(f"{k} = {str(v).lower()}" for k, v in self.flags.items())
        return f"Lora(rank = {self.rank}, alpha = {self.alpha}, dropout = {self.dropout}, {flags})"


@register("block")
class Adapter(nn.Module, BranchAdapter):
    """A bottleneck `up(act(down(x)))` (`dim -> hidden -> dim`), ml-l3m's `Adapter`.

    As a Transformer's `adapter` it maps the output of every layer's attention and feed-forward before the
    residual sum (`x + adapter(attn(norm(x)))`, ml-l3m's `BlockWithAdapter`); its linears take the
    trunk's `init` and `init_std`, as ml-l3m's trunk initialises every linear in it.
    """

    outputs = ("x",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "x: float[..., dim] -> x: float[..., dim]"
    checks = (("hidden >= 1", "hidden ({hidden}) must be at least 1"),)

    def __init__(self, dim: int, hidden: int = 32, act: Literal["gelu", "silu"] = "gelu",
                 init: InitStyle = "trunc_normal", init_std: float = 0.02):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; expected gelu or silu")
        if hidden < 1:
            raise ValueError(f"hidden ({hidden}) must be at least 1")
        self.act = act
        self.down = Linear(dim, hidden, bias=True, init=init, init_std=init_std)
        self.up = Linear(hidden, dim, bias=True, init=init, init_std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(_ACTS[self.act](self.down(x)))

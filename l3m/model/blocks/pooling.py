"""Postprocessors that pick or pool tokens: `[B, N, D]` to `[B, D]` (or fewer tokens)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from l3m.model.blocks.attention import attend
from l3m.model.blocks.layers import Linear
from l3m.model.init import InitStyle, init_weight_
from l3m.registry import register


@register("block")
class SelectTokens(nn.Module):
    """Keeps tokens `start:end` (e.g. drops cls/register tokens, or keeps only the image part)."""

    outputs = ("x",)
    shapes = "@select_tokens"  # start/end within the sequence, at least one token

    def __init__(self, start: int = 0, end: int | None = None):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start : self.end]


@register("block")
class ClsPool(nn.Module):
    """The first token (a cls token)."""

    outputs = ("x",)
    shapes = "x: [B, N, ...] -> x: [B, ...]"
    checks = (("N >= 1", "x has no token to pool"),)

    def __init__(self):
        super().__init__()

    def pooled_rows(self) -> int:
        """The only token this reads (l3m.model.pruning: the trunk before it may compute just that one)."""
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


@register("block")
class EosPool(nn.Module):
    """The token where CLIP's text tower reads its sentence embedding: with `which=first` (ml-l3m's
    ExtractEOS) the first position where `tokens == eos_id`, position 0 when there is none (so a
    caption padded with EOS is read at its real end); with `which=last` the last EOS position, else
    the last token."""

    outputs = ("x",)
    shapes = "x: [B, N, ...], tokens: long[B, N] -> x: [B, ...]"

    def __init__(self, eos_id: int, which: Literal["first", "last"] = "first"):
        super().__init__()
        if which not in ("first", "last"):
            raise ValueError(f"unknown which {which!r}; expected first or last")
        self.eos_id, self.which = eos_id, which

    def pooled_rows(self, tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """`[B]`: the position read in each sample (l3m.model.pruning: the trunk before it may compute
        just those rows); None without the tokens."""
        if tokens is None:
            return None
        n = tokens.shape[1]
        is_eos = tokens == self.eos_id
        if self.which == "first":
            return is_eos.int().argmax(dim=1)  # argmax returns the first maximum; 0 when no EOS
        pos = torch.arange(n, device=tokens.device).expand_as(tokens)
        at = torch.where(is_eos, pos, -1).amax(dim=1)
        return torch.where(at < 0, n - 1, at)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 < tokens.shape[1]:  # the trunk computed only the rows read (pooled_rows)
            return x[:, 0]
        return x[torch.arange(x.shape[0], device=x.device), self.pooled_rows(tokens).to(x.device)]


@register("block")
class AvgPool(nn.Module):
    """The mean of tokens `start:` (start > 0 skips cls/register tokens)."""

    outputs = ("x",)
    shapes = "x: [B, N, ...] -> x: [B, ...]"
    checks = (("start < N", "start ({start}) leaves none of the {N} tokens to average"),)

    def __init__(self, start: int = 0):
        super().__init__()
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start :].mean(dim=1)


@register("block")
class AttentionPool(nn.Module):
    """Learned queries cross-attend to the tokens; the queries' outputs are averaged to `[B, dim]`
    (the attentive probe of AIM)."""

    outputs = ("x",)
    shapes = "x: float[B, N, dim] -> x: float[B, dim]"
    checks = (("heads >= 1 and dim % heads == 0", "heads ({heads}) must divide dim ({dim})"),)

    def __init__(
        self,
        dim: int,
        heads: int,
        num_queries: int = 1,
        qkv_bias: bool = False,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.head_dim, self.init_std = dim // heads, init_std
        self.query = nn.Parameter(torch.empty(1, num_queries, dim))
        self.kv = Linear(dim, 2 * dim, bias=qkv_bias, init=init, init_std=init_std)
        self.init_weights()

    def init_weights(self) -> None:
        init_weight_(self.query, "trunc_normal", std=self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, hd = x.shape[0], x.shape[1], self.head_dim
        q = self.query.to(x.dtype).expand(b, -1, -1)
        q = q.reshape(b, q.shape[1], -1, hd)
        kv = self.kv(x).view(b, n, -1, 2, hd)
        return attend(q, kv[..., 0, :], kv[..., 1, :]).mean(dim=1)

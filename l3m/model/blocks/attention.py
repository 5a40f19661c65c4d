"""Multi-head attention (self or cross, MHA/GQA/MQA) on `F.scaled_dot_product_attention`.

Head counts are read from the projections' outputs at run time (`view(B, N, -1, head_dim)`),
so the same code runs after tensor parallelism has split the heads across ranks. The fused
projections keep each key/value group contiguous, `[q_1 .. q_rep, k, v]` per group, so that a
column-wise shard is a set of whole groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
)

from l3m.model.blocks.embeddings import apply_rope
from l3m.model.blocks.flex import flex_attend, is_block_mask
from l3m.model.blocks.layers import Linear
from l3m.model.blocks.masks import causal
from l3m.model.blocks.norms import make_norm


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """SDPA on `[B, N, H, hd]` tensors (k/v may have fewer heads: GQA); returns `[B, N, H*hd]`.

    A mask together with `is_causal` is combined into one boolean mask. A FlexAttention `BlockMask`
    (from `DocumentMask`, causal already) runs FlexAttention instead of SDPA.
    """
    if is_block_mask(mask):
        out = flex_attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, q.shape[-1] ** -0.5)
        return out.transpose(1, 2).flatten(2)
    if mask is not None and is_causal:
        mask = mask & causal(q.shape[1], q.device).view(1, 1, q.shape[1], q.shape[1])
        is_causal = False
    hq, hk = q.shape[2], k.shape[2]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=is_causal,
        scale=q.shape[-1] ** -0.5,
        enable_gqa=hq != hk,
    )
    return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Self-attention over `x`, or cross-attention from `x` to `context` when `cross`.

    Under context parallelism `l3m.dist.cp` sets `cp` on self-attention: `x` is then this rank's
    slice of the sequence, keys and values are gathered over the slices, and `mask` holds the
    rows of the local queries (`[B, 1, n_local, N]`).
    """

    cp = None  # a l3m.dist.cp.ContextParallel when the sequence is split over ranks

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int | None = None,
        kv_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        fused_qkv: bool = True,
        qk_norm: bool = False,
        norm: str = "layernorm",
        norm_eps: float = 1e-6,
        cross: bool = False,
        context_dim: int | None = None,
        init: str = "trunc_normal",
        init_std: float = 0.02,
        depth: int = 0,
    ):
        super().__init__()
        hd = head_dim or dim // heads
        kvh = kv_heads or heads
        if heads % kvh:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kvh})")
        self.head_dim, self.rep, self.cross, self.fused, self.qk_norm = hd, heads // kvh, cross, fused_qkv, qk_norm
        cdim = context_dim or dim

        # "fan_in_depth_scaled" (ml-l3m's) scales every weight by the network's depth, not just `proj`.
        every = depth if init == "fan_in_depth_scaled" else 0

        def lin(i: int, o: int, bias: bool, d: int = every) -> Linear:
            return Linear(i, o, bias=bias, init=init, init_std=init_std, init_depth=d)

        if cross:
            self.q = lin(dim, heads * hd, qkv_bias)
            if fused_qkv:
                self.kv = lin(cdim, kvh * 2 * hd, qkv_bias)
            else:
                self.k = lin(cdim, kvh * hd, qkv_bias)
                self.v = lin(cdim, kvh * hd, qkv_bias)
        elif fused_qkv:
            self.qkv = lin(dim, kvh * (self.rep + 2) * hd, qkv_bias)
        else:
            self.q = lin(dim, heads * hd, qkv_bias)
            self.k = lin(dim, kvh * hd, qkv_bias)
            self.v = lin(dim, kvh * hd, qkv_bias)
        self.q_norm = make_norm(norm if qk_norm else "none", hd, eps=norm_eps)
        self.k_norm = make_norm(norm if qk_norm else "none", hd, eps=norm_eps)
        self.proj = lin(heads * hd, dim, proj_bias, depth)

    def tp_plan(self) -> dict[str, ParallelStyle]:
        names = ["q", "kv"] if self.cross and self.fused else ["qkv"] if self.fused else ["q", "k", "v"]
        plan: dict[str, ParallelStyle] = {n: ColwiseParallel() for n in names}
        plan["proj"] = RowwiseParallel()
        if self.qk_norm:
            # The norms see only this rank's heads; as "sequence parallel" over the head dim
            # their replicated weights get gradients summed over ranks.
            plan["q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
            plan["k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        return plan

    def project(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        b, n, hd = x.shape[0], x.shape[1], self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            m = context.shape[1]
            q = self.q(x).view(b, n, -1, hd)
            if self.fused:
                k, v = self.kv(context).view(b, m, -1, 2, hd).unbind(3)
                return q, k, v
            return q, self.k(context).view(b, m, -1, hd), self.v(context).view(b, m, -1, hd)
        if self.fused:
            # One split (not three index expressions): cheaper to call, and its backward writes the
            # gradients into one buffer instead of zero-filling a full-size one per slice.
            qkv = self.qkv(x).view(b, n, -1, self.rep + 2, hd)
            if self.rep == 1:
                return qkv.unbind(3)
            q, k, v = qkv.split([self.rep, 1, 1], dim=3)
            return q.flatten(2, 3), k.squeeze(3), v.squeeze(3)
        return self.q(x).view(b, n, -1, hd), self.k(x).view(b, n, -1, hd), self.v(x).view(b, n, -1, hd)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q, k, v = self.project(x, context)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.cp is not None and not self.cross:
            if is_block_mask(mask):
                raise ValueError("a FlexAttention block mask cannot be split over context-parallel ranks; "
                                 "DocumentMask builds dense rows under mesh.cp > 1 (impl = auto or dense)")
            n = q.shape[1]
            k, v = self.cp.gather(k, dim=1), self.cp.gather(v, dim=1)
            if is_causal:  # the causal rows of this rank's queries, over every key
                rows = torch.arange(n, device=q.device) + self.cp.offset(n)
                c = (torch.arange(k.shape[1], device=q.device)[None, :] <= rows[:, None])[None, None]
                mask, is_causal = (c if mask is None else mask & c), False
        return self.proj(attend(q, k, v, mask=mask, is_causal=is_causal))

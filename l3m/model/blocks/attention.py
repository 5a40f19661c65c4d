"""Multi-head attention (self or cross, MHA/GQA/MQA) on `F.scaled_dot_product_attention`.

Head counts are read from the projections' outputs at run time (`view(B, N, -1, head_dim)`),
so the same code runs after tensor parallelism has split the heads across ranks. The fused
projections keep each key/value group contiguous, `[q_1 .. q_rep, k, v]` per group, so that a
column-wise shard is a set of whole groups.

Registered as the block (and component) `Attention`: `Transformer(attn = Attention(pos = Rope2d()))`
configures every layer's attention; its `pos` (a `Positional` component, built with this head size)
rotates queries and keys before the scores; its `lora` (`Lora(rank = 8)`) adds low-rank updates to the
projections (l3m.model.blocks.peft).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
)

from l3m.interfaces import AttentionLayer, LinearAdapter, Norm, Positional
from l3m.model.blocks.embeddings import apply_rope
from l3m.model.blocks.flex import flex_attend, is_block_mask
from l3m.model.blocks.layers import Linear
from l3m.model.blocks.masks import causal, causal_rows
from l3m.model.blocks.norms import make_norm
from l3m.model.tp_checks import head_groups_tp_problem
from l3m.registry import register

# CPU matrix units for bf16/fp16 tiles. Without them torch's CPU flash-attention kernel is slower in
# bf16 than in fp32 for short sequences (measured; as if a fixed cost per block dominated) and slower
# in fp16 at every length: `fp32_attention` says when to compute in float32 instead (more exact as well).
_AMX_BF16 = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
_AMX_FP16 = bool(getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)())


def fp32_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether attention of `q` `[B, N, H, hd]` over `k` `[B, M, Hk, hd]` runs faster in float32 than in
    their reduced precision: on a CPU without AMX, fp16 always (2-7x here), bf16 while the keys are
    short, hd <= 64 and M * hd <= 8192 (1.2-4.5x; longer ones are 1.0-1.4x faster in bf16). Measured on
    this project's AVX512-BF16 CPU, forward and backward: benchmarks/NOTES.md, "bf16 on this CPU"."""
    if q.device.type != "cpu":
        return False
    if q.dtype == torch.float16:
        return not _AMX_FP16
    hd = q.shape[-1]
    return q.dtype == torch.bfloat16 and not _AMX_BF16 and hd <= 64 and k.shape[1] * hd <= 8192


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
    if fp32_attention(q, k):  # outside autocast, which would cast the inputs back down
        dtype = q.dtype
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.float()
        with torch.autocast("cpu", enabled=False):
            return attend(q.float(), k.float(), v.float(), mask, is_causal).to(dtype)
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


def take_rows(x: torch.Tensor, rows: int | torch.Tensor) -> torch.Tensor:
    """`[B, 1, ...]`: token `rows` of every sample (an int), or token `rows[b]` of sample b (`[B]` indices)."""
    if isinstance(rows, int):
        return x[:, rows : rows + 1]
    return x[torch.arange(x.shape[0], device=x.device), rows.to(x.device)].unsqueeze(1)


def row_queries(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int | torch.Tensor,
                is_causal: bool) -> tuple[torch.Tensor, ...]:
    """Attention for the queries at `rows` only (see `take_rows`), over every key: q, k, v and the
    mask that causality leaves (keys up to each query's position), so `attend` needs no `is_causal`."""
    q = take_rows(q, rows)
    if not is_causal:
        return q, k, v, None
    if isinstance(rows, int):  # the same prefix of keys for every sample
        return q, k[:, : rows + 1], v[:, : rows + 1], None
    return q, k, v, causal_rows(rows.to(q.device), k.shape[1])[:, None, None, :]


class _ShardHeads(ParallelStyle):
    """Tensor parallelism for a position module's per-head parameters (RopeMixed's `freqs`
    `[2, kv_heads, ...]`): each rank keeps the key/value heads whose projections it holds."""

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        from torch.distributed.tensor import Shard, distribute_module, distribute_tensor

        def shard(name: str, mod: nn.Module, mesh: Any) -> None:
            for pname, p in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(pname, nn.Parameter(distribute_tensor(p, mesh, [Shard(1)])))

        return distribute_module(module, device_mesh, shard)


@register("block")
class Attention(nn.Module, AttentionLayer):
    """Multi-head self-attention (or cross-attention to `context`), with an optional position encoding `pos`.

    Self-attention over `x` (causal when `causal`), or cross-attention from `x` to `context` when `cross`.

    `pos` (Rope, Rope2d, RopeMixed) rotates the queries and keys of self-attention; cross-attention
    leaves it out (its queries and keys are positions of different sequences). A Transformer layer
    may instead hand its shared 1-D RoPE tables (`rope = true`) to an attention without `pos`.

    Under context parallelism `l3m.dist.cp` sets `cp` on self-attention: `x` is then this rank's
    share of the sequence, keys and values are gathered over the ranks, and `mask` holds the
    rows of the local queries (`[B, 1, n_local, N]`, columns in the gathered order).
    """

    cp = None  # a l3m.dist.cp.ContextParallel when the sequence is split over ranks
    kv_cache = None  # a l3m.generation.cache.LayerCache while generating: keys/values of earlier tokens
    # Traits (l3m.traits): self-attention handles a slice of the sequence; cross-attention cannot.
    context_parallel = property(lambda self: "whole" if self.cross else "aware")
    tp_problem = head_groups_tp_problem
    outputs = ("x",)
    shapes = "@attention"  # x, context: [B, N, dim], [B, M, context_dim or dim]; heads | dim unless head_dim; pos fits
    checks = (
        ("heads >= 1", "heads ({heads}) must be at least 1"),
        ("kv_heads >= 1 and heads % kv_heads == 0", "kv_heads ({kv_heads}) must divide heads ({heads})"),
    )

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
        norm: Norm | Literal["layernorm", "rmsnorm"] = "layernorm",
        norm_eps: float = 1e-6,
        cross: bool = False,
        context_dim: int | None = None,
        init: str = "trunc_normal",
        init_std: float = 0.02,
        depth: int = 0,
        causal: bool = False,
        pos: Positional | None = None,
        lora: LinearAdapter | None = None,
    ):
        super().__init__()
        if head_dim is None and dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim}), or give head_dim")
        hd = head_dim or dim // heads
        kvh = kv_heads or heads
        if heads % kvh:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kvh})")
        self.head_dim, self.rep, self.cross, self.fused, self.qk_norm = hd, heads // kvh, cross, fused_qkv, qk_norm
        self.causal = causal
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
        self.pos = None
        if pos is not None and not cross:
            from l3m.model.components import as_factory

            self.pos = as_factory(pos)(head_dim=hd, heads=heads, kv_heads=kvh)
        if lora is not None:
            self._add_lora(lora)

    def _add_lora(self, lora: Any) -> None:
        """Wrap the projections with `lora`'s low-rank updates (l3m.model.blocks.peft); their weights keep
        their names, so pretrained weights load as they are."""
        from l3m.model.components import as_factory

        spec, hd = as_factory(lora)(), self.head_dim
        if self.cross:
            self.q = spec.wrap(self.q, [("q", 1)], self.q.out_features)
            if self.fused:
                self.kv = spec.wrap(self.kv, [("k", 1), ("v", 1)], hd)
            else:
                self.k = spec.wrap(self.k, [("k", 1)], self.k.out_features)
                self.v = spec.wrap(self.v, [("v", 1)], self.v.out_features)
        elif self.fused:  # per key/value group: [q_1 .. q_rep, k, v], each head_dim wide
            self.qkv = spec.wrap(self.qkv, [("q", self.rep), ("k", 1), ("v", 1)], hd)
        else:
            self.q = spec.wrap(self.q, [("q", 1)], self.q.out_features)
            self.k = spec.wrap(self.k, [("k", 1)], self.k.out_features)
            self.v = spec.wrap(self.v, [("v", 1)], self.v.out_features)
        self.proj = spec.wrap(self.proj, [("proj", 1)], self.proj.out_features)

    def tp_plan(self) -> dict[str, ParallelStyle]:
        names = ["q", "kv"] if self.cross and self.fused else ["qkv"] if self.fused else ["q", "k", "v"]
        plan: dict[str, ParallelStyle] = {n: ColwiseParallel() for n in names}
        plan["proj"] = RowwiseParallel()
        if self.qk_norm:
            # The norms see only this rank's heads; as "sequence parallel" over the head dim
            # their replicated weights get gradients summed over ranks.
            plan["q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
            plan["k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        if self.pos is not None and any(True for _ in self.pos.parameters()):
            plan["pos"] = _ShardHeads()
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
        self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None, **host: Any
    ) -> torch.Tensor:
        """`host` is what a Transformer layer adds: `is_causal` (default: `causal`); `rope`, its
        shared 1-D RoPE tables (cos, sin), used when this attention has no `pos` of its own; and
        `rows`, the only output tokens anyone reads (`take_rows`; l3m.model.pruning): the other
        queries are left out, keys and values still cover every token."""
        is_causal = host.get("is_causal", self.causal and not self.cross)
        rope = host.get("rope")
        q, k, v = self.project(x, context)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.pos is not None:
            q, k = self.pos(q, k)
        elif rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kv_cache is not None and not self.cross:  # generation: attend to the cached tokens too
            k, v, mask, is_causal = self.kv_cache.extend(k, v, mask, is_causal)
        rows = host.get("rows")
        if rows is not None:  # l3m.model.pruning plans it without a mask, a cache or context parallelism
            if mask is not None or self.cp is not None:
                raise ValueError("attention to selected rows takes no mask and no context parallelism")
            q, k, v, mask = row_queries(q, k, v, rows, is_causal)
            return self.proj(attend(q, k, v, mask=mask))
        if self.cp is not None and not self.cross:
            if is_block_mask(mask):
                raise ValueError("a FlexAttention block mask cannot be split over context-parallel ranks; "
                                 "DocumentMask builds dense rows under mesh.cp > 1 (impl = auto or dense)")
            k, v = self.cp.gather(k, dim=1), self.cp.gather(v, dim=1)
            keep = self.cp.key_mask(q.shape[1], q.device)  # padding keys (l3m.dist.cp_whole) are left out
            if keep is not None:
                mask = keep[None, None, None, :] if mask is None else mask & keep
            if is_causal:
                return self.proj(cp_causal_attend(self.cp, q, k, v, mask))
        return self.proj(attend(q, k, v, mask=mask, is_causal=is_causal))


def cp_causal_attend(cp: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """Causal attention of this rank's queries over the gathered keys/values (gathered order, as
    `mask`'s columns). Keys are put back in sequence order and each run of consecutive local queries
    (one run when contiguous, two under zigzag) reads only the keys up to its end, so a rank's work
    is what causality needs: equal on every rank under zigzag."""
    n = q.shape[1]
    order = torch.argsort(cp.key_positions(n, q.device))
    k, v = k.index_select(1, order), v.index_select(1, order)
    if mask is not None:
        mask = mask.index_select(-1, order)
    outs, i = [], 0
    for start, length in cp.chunks(n):
        end = start + length
        rows = torch.arange(start, end, device=q.device)
        m = causal_rows(rows, end)[None, None]
        if mask is not None:
            m = m & (mask if mask.shape[2] == 1 else mask[:, :, i:i + length])[..., :end]
        outs.append(attend(q[:, i:i + length], k[:, :end], v[:, :end], mask=m))
        i += length
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

"""The transformer trunk: pre-norm layers of (self-attention, cross-attention, feed-forward).

Layers live in an `nn.ModuleList` called `layers` so that FSDP, activation checkpointing and
`torch.compile` can wrap each one. Feed-forwards can be dense or mixture-of-experts; the
MoE load-balancing terms are averaged over the MoE layers into the `aux_loss` output.
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor.parallel import ParallelStyle

from l3m.model.blocks.attention import Attention
from l3m.model.blocks.embeddings import RotaryEmbedding
from l3m.model.blocks.feedforward import MLP, mlp_hidden
from l3m.model.blocks.layers import DropPath, collect_tp_plan
from l3m.model.blocks.moe import MoE
from l3m.model.blocks.norms import make_norm
from l3m.model.init import InitStyle, check_style
from l3m.registry import register

_MLP = {"gelu": ("gelu", False), "swiglu": ("silu", True), "geglu": ("gelu", True)}


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


class TransformerLayer(nn.Module):
    """One pre-norm layer; each part is optional (`attn`, `cross_attn`, `mlp` may be None).

    `identity_attn` (with `attn` None) keeps the attention branch as an identity map, so the layer
    adds `norm1(x)` to `x`: what ml-l3m's MLP-only blocks (AIMv1's decoder) compute.
    """

    def __init__(
        self,
        dim: int,
        attn: Attention | None,
        cross_attn: Attention | None,
        mlp: nn.Module | None,
        norm: str,
        norm_eps: float,
        norm_fp32: bool,
        drop_path: float,
        identity_attn: bool = False,
    ):
        super().__init__()
        self.identity_attn = identity_attn and attn is None
        self.norm1 = make_norm(norm, dim, norm_eps, norm_fp32) if attn is not None or self.identity_attn else None
        self.attn = attn
        self.norm_cross = make_norm(norm, dim, norm_eps, norm_fp32) if cross_attn is not None else None
        self.cross_attn = cross_attn
        self.norm2 = make_norm(norm, dim, norm_eps, norm_fp32) if mlp is not None else None
        self.mlp = mlp
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Without stochastic depth the branch is added as it is (no call per residual).
        drop = self.drop_path if self.drop_path.p > 0.0 else _keep
        if self.attn is not None:
            x = x + drop(self.attn(self.norm1(x), mask=mask, is_causal=is_causal, rope=rope))
        elif self.identity_attn:
            x = x + drop(self.norm1(x))
        if self.cross_attn is not None:
            x = x + drop(self.cross_attn(self.norm_cross(x), context=context))
        aux = None
        if self.mlp is not None:
            h = self.mlp(self.norm2(x))
            if isinstance(h, tuple):
                h, aux = h
            x = x + drop(h)
        return x, aux


@register("block")
class Transformer(nn.Module):
    """A stack of `depth` pre-norm transformer layers and an optional final norm.

    Outputs: `x`; `aux_loss`, the MoE balancing terms averaged over the MoE layers and scaled by
    `moe_aux_scale` (a zero scalar without MoE; the mean, as megablocks' `batched_load_balancing_loss`
    divides by the number of layers); and `hidden`, the final-normed average of the
    last `return_hidden` layers' outputs (None when `return_hidden` is 0).

    `mask` is a boolean `[B, 1, N, N]` (True = may attend). With `causal` it is intersected
    with the causal mask, so prefix attention is `causal=false` plus a PrefixCausalMask.

    `attention=false` drops self-attention; `identity_attn=true` then keeps its branch as an
    identity (each layer adds `norm1(x)`), as ml-l3m's MLP-only blocks do (AIMv1's decoder).
    """

    outputs = ("x", "aux_loss?", "hidden?")
    shapes = "@transformer"  # context: [B, M, context_dim or dim]; heads | dim unless head_dim; even head_dim with rope
    checks = (
        ("heads >= 1", "heads ({heads}) must be at least 1"),
        ("kv_heads >= 1 and heads % kv_heads == 0", "kv_heads ({kv_heads}) must divide heads ({heads})"),
        ("1 <= top_k <= num_experts or moe_every == 0",
         "top_k ({top_k}) must be between 1 and num_experts ({num_experts})"),
        ("attention or mlp != 'none' or cross_attention", "a transformer layer needs attention or an mlp"),
        ("not identity_attn or not attention", "identity_attn replaces self-attention: it needs attention = false"),
        ("moe_every == 0 or mlp != 'none'", "moe_every ({moe_every}) needs an mlp to replace (mlp = none)"),
        ("0 <= return_hidden <= depth", "return_hidden ({return_hidden}) must be between 0 and depth ({depth})"),
    )

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        head_dim: int | None = None,
        kv_heads: int | None = None,
        mlp: Literal["gelu", "swiglu", "geglu", "none"] = "gelu",
        mlp_ratio: float = 4.0,
        hidden: int | None = None,
        multiple_of: int = 256,
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        norm_eps: float = 1e-6,
        norm_fp32: bool = False,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        mlp_bias: bool = False,
        fused_qkv: bool = True,
        qk_norm: bool = False,
        rope: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: list[float] | None = None,
        causal: bool = False,
        attention: bool = True,
        identity_attn: bool = False,
        drop_path: float = 0.0,
        final_norm: bool = True,
        moe_every: int = 0,
        num_experts: int = 4,
        top_k: int = 1,
        capacity_factor: float | None = None,
        moe_aux_scale: float = 0.01,
        moe_act: Literal["silu", "gelu"] = "silu",
        moe_init: InitStyle | None = None,
        moe_normalize: bool = True,
        init: InitStyle = "trunc_normal",
        init_std: float = 0.02,
        cross_attention: bool = False,
        context_dim: int | None = None,
        return_hidden: int = 0,
    ):
        super().__init__()
        check_style(init)
        if mlp not in (*_MLP, "none"):
            raise ValueError(f"unknown mlp {mlp!r}; expected gelu, swiglu, geglu or none")
        if not attention and mlp == "none" and not cross_attention:
            raise ValueError("a transformer layer needs attention or an mlp")
        if identity_attn and attention:
            raise ValueError("identity_attn replaces self-attention: it needs attention=false")
        if moe_every and mlp == "none":
            raise ValueError("moe_every needs an mlp to replace")
        if not 0 <= return_hidden <= depth:
            raise ValueError(f"return_hidden={return_hidden} must be between 0 and depth={depth}")
        if head_dim is None and (attention or cross_attention) and dim % heads:
            # the heads would silently cover only heads * (dim // heads) of the width
            raise ValueError(f"heads ({heads}) must divide dim ({dim}), or give head_dim")
        head_dim = head_dim or dim // heads
        self.dim, self.depth, self.causal = dim, depth, causal
        self.moe_aux_scale, self.return_hidden = moe_aux_scale, return_hidden
        act, glu = _MLP.get(mlp, ("gelu", False))
        # MoE experts are always gated (`moe_act`: SiLU or GELU), so they get the GLU size unless `hidden` is given.
        dense_hidden = hidden or mlp_hidden(dim, mlp_ratio, glu, multiple_of)
        moe_hidden = hidden or mlp_hidden(dim, mlp_ratio, True, multiple_of)
        # Stochastic depth grows linearly to `drop_path` at the last layer (plain Python: no
        # tensor may be read while building on the meta device).
        rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path] * depth
        common = dict(init=init, init_std=init_std)
        attn_args = dict(
            dim=dim, heads=heads, head_dim=head_dim, kv_heads=kv_heads, qkv_bias=qkv_bias,
            proj_bias=proj_bias, fused_qkv=fused_qkv, qk_norm=qk_norm, norm=norm, norm_eps=norm_eps,
            depth=depth, **common,
        )  # fmt: skip
        layers = []
        for i in range(depth):
            attn = Attention(**attn_args) if attention else None
            cross = Attention(**attn_args, cross=True, context_dim=context_dim) if cross_attention else None
            if mlp == "none":
                ffn = None
            elif moe_every and (i + 1) % moe_every == 0:
                ffn = MoE(dim, moe_hidden, num_experts, top_k, capacity_factor, init_depth=depth, act=moe_act,
                          expert_init=moe_init, normalize=moe_normalize, **common)
            else:
                ffn = MLP(dim, dense_hidden, act=act, bias=mlp_bias, glu=glu, init_depth=depth, **common)
            layers.append(TransformerLayer(dim, attn, cross, ffn, norm, norm_eps, norm_fp32, rates[i], identity_attn))
        self.layers = nn.ModuleList(layers)
        self.num_moe = sum(isinstance(layer.mlp, MoE) for layer in layers)
        self.rope = RotaryEmbedding(head_dim, rope_theta, rope_scaling) if rope else None
        self.norm = make_norm(norm if final_norm else "none", dim, norm_eps, norm_fp32)

    def tp_plan(self) -> dict[str, ParallelStyle]:
        return collect_tp_plan(self)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rope = self.rope(x.shape[1]) if self.rope is not None else None
        aux = torch.zeros((), device=x.device, dtype=torch.float32)
        kept: list[torch.Tensor] = []
        first_kept = self.depth - self.return_hidden
        for i, layer in enumerate(self.layers):
            x, a = layer(x, mask=mask, is_causal=self.causal, rope=rope, context=context)
            if a is not None:
                aux = aux + a
            if self.return_hidden and i >= first_kept:
                kept.append(x)
        hidden = self.norm(torch.stack(kept).mean(dim=0)) if kept else None
        return self.norm(x), aux * (self.moe_aux_scale / max(self.num_moe, 1)), hidden


def _decoder_signature() -> inspect.Signature:
    params = [p for n, p in inspect.signature(Transformer.__init__).parameters.items() if n != "cross_attention"]
    return inspect.Signature(params)


@register("block")
class CrossAttentionDecoder(Transformer):
    """A Transformer whose every layer also cross-attends to `context` (e.g. an image encoder's
    tokens); its constructor is Transformer's less `cross_attention`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, cross_attention=True, **kwargs)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return super().forward(x, mask=mask, context=context)


CrossAttentionDecoder.__init__.__signature__ = _decoder_signature()
CrossAttentionDecoder.__init__.__annotations__ = {
    k: v for k, v in Transformer.__init__.__annotations__.items() if k != "cross_attention"
}

"""The transformer trunk: pre-norm layers of (self-attention, cross-attention, feed-forward).

Layers live in an `nn.ModuleList` called `layers` so that FSDP, activation checkpointing and
`torch.compile` can wrap each one. Feed-forwards can be dense or mixture-of-experts; the
MoE load-balancing terms are averaged over the MoE layers into the `aux_loss` output.

Each part is a component the trunk builds once per layer with its own context (width, heads,
depth, init, ...): `attn = Attention(pos = Rope2d())`, `mlp = SwiGLU(hidden = 256)`,
`norm = RMSNorm(eps = 1e-5)`. The flat arguments (heads, qkv_bias, norm_eps, mlp_ratio, ...) are
that context; what the component's call writes wins. The strings ("swiglu", "rmsnorm") name the
same components, so a file gets the same parameters and function either way.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.tensor.parallel import ParallelStyle

from l3m.interfaces import AttentionLayer, BranchAdapter, FeedForward, Norm, use
from l3m.model.blocks.attention import Attention, take_rows
from l3m.model.blocks.embeddings import RotaryEmbedding
from l3m.model.blocks.feedforward import MLP, GeGLU, SwiGLU, mlp_hidden
from l3m.model.blocks.layers import DropPath, collect_tp_plan
from l3m.model.blocks.moe import MoE
from l3m.model.blocks.norms import make_norm
from l3m.model.components import Factory, as_factory
from l3m.model.init import InitStyle, check_style
from l3m.registry import register

# The feed-forward a string names: the same component a file may write.
_MLP = {
    "gelu": lambda: Factory("MLP", MLP, {"act": "gelu", "glu": False}),
    "swiglu": lambda: Factory("SwiGLU", SwiGLU),
    "geglu": lambda: Factory("GeGLU", GeGLU),
}


_ATTENTION = use("Attention")  # the default self-attention component


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


class TransformerLayer(nn.Module):
    """One pre-norm layer; each part is optional (`attn`, `cross_attn`, `mlp` may be None).

    `identity_attn` (with `attn` None) keeps the attention branch as an identity map, so the layer
    adds `norm1(x)` to `x`: what ml-l3m's MLP-only blocks (AIMv1's decoder) compute.
    """

    ac_parts = {"mlp": ("mlp",)}  # trait (l3m.traits): activation_checkpointing = "mlp" checkpoints `mlp`

    def __init__(
        self,
        dim: int,
        attn: nn.Module | None,
        cross_attn: nn.Module | None,
        mlp: nn.Module | None,
        norm: Any,
        norm_eps: float,
        norm_fp32: bool,
        drop_path: float,
        identity_attn: bool = False,
        adapter_1: nn.Module | None = None,
        adapter_2: nn.Module | None = None,
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
        # Bottleneck adapters on the attention and feed-forward outputs (ml-l3m's BlockWithAdapter).
        self.adapter_1 = adapter_1 if attn is not None else None
        self.adapter_2 = adapter_2 if mlp is not None else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: torch.Tensor | None = None,
        rows: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`is_causal` None: each attention's own `causal` (the trunk builds it with its `causal`).
        `rows`: compute only those output tokens, `[B, 1, dim]` (`take_rows`; l3m.model.pruning)."""
        # Without stochastic depth the branch is added as it is (no call per residual).
        drop = self.drop_path if self.drop_path.p > 0.0 else _keep
        if self.attn is not None:
            host: dict[str, Any] = {}
            own = isinstance(self.attn, Attention)  # a user's AttentionLayer gets x and mask only
            if own:
                if is_causal is not None:
                    host["is_causal"] = is_causal
                if rope is not None:
                    host["rope"] = rope
                if rows is not None:
                    host["rows"] = rows
            h = self.attn(self.norm1(x), mask=mask, **host)
            if rows is not None:
                x, h = take_rows(x, rows), h if own else take_rows(h, rows)
            x = x + drop(h if self.adapter_1 is None else self.adapter_1(h))
        else:
            if rows is not None:
                x = take_rows(x, rows)
            if self.identity_attn:
                x = x + drop(self.norm1(x))
        if self.cross_attn is not None:
            x = x + drop(self.cross_attn(self.norm_cross(x), context=context))
        aux = None
        if self.mlp is not None:
            h = self.mlp(self.norm2(x))
            if isinstance(h, tuple):
                h, aux = h
            x = x + drop(h if self.adapter_2 is None else self.adapter_2(h))
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

    `attention=false` (or `attn = null`) drops self-attention; `identity_attn=true` then keeps its
    branch as an identity (each layer adds `norm1(x)`), as ml-l3m's MLP-only blocks do (AIMv1's decoder).

    Components: `attn` (an AttentionLayer, default `Attention()`) is built per layer with dim, heads,
    head_dim, kv_heads, qkv_bias, proj_bias, fused_qkv, qk_norm, norm, norm_eps, causal, depth, init and
    init_std; cross-attention with the same component plus `cross = true` and `context_dim` (and no
    `pos`). `mlp` (a FeedForward) with dim, hidden, mlp_ratio, multiple_of, bias = mlp_bias, init_depth =
    depth, init, init_std (and num_experts, top_k, capacity_factor for a MoE); `norm` (a Norm) with dim,
    eps = norm_eps, fp32 = norm_fp32. `rope = true` is one 1-D RoPE table shared by the layers (what
    exports read); an attention with its own `pos` uses that instead.

    `adapter` (a BranchAdapter, e.g. `Adapter(hidden = 32)`) is built twice per layer with dim, init and
    init_std: `adapter_1` maps the self-attention's output and `adapter_2` the feed-forward's before each
    residual sum (ml-l3m's BlockWithAdapter; l3m.model.blocks.peft).

    `share_layers = true` (ALBERT) applies the first layer `depth` times: one set of weights, named
    `layers.0.*`, one FSDP/AC/compile unit (stochastic depth then has the first layer's rate, 0).

    When only a pooling block (ClsPool, EosPool) reads `x`, training computes the last layer for the
    tokens it reads alone (l3m.model.pruning; `train.prune_rows`): `read_rows(pick)` hands over the
    pooling's `pooled_rows`, whose other inputs the MetaModel then passes to `forward`.
    """

    outputs = ("x", "aux_loss?", "hidden?")
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    layer_lists = ("layers",)  # trait: the repeated layers (AC, compile and FSDP units)
    splits_between_layers = True  # forward = run_layers over `layers`, then finish: pipeline stages may cut here
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
        ("not share_layers or moe_every == 0", "share_layers repeats the first layer: it cannot mix in MoE layers"),
    )

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        head_dim: int | None = None,
        kv_heads: int | None = None,
        mlp: FeedForward | Literal["gelu", "swiglu", "geglu", "none"] = "gelu",
        mlp_ratio: float = 4.0,
        hidden: int | None = None,
        multiple_of: int = 256,
        norm: Norm | Literal["layernorm", "rmsnorm"] = "layernorm",
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
        attn: AttentionLayer | None = _ATTENTION,
        share_layers: bool = False,
        adapter: BranchAdapter | None = None,
    ):
        super().__init__()
        check_style(init)
        if isinstance(mlp, str) and mlp not in (*_MLP, "none"):
            raise ValueError(f"unknown mlp {mlp!r}; expected gelu, swiglu, geglu or none")
        if isinstance(norm, str) and norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {norm!r}; expected layernorm or rmsnorm")
        attn_f = as_factory(attn) if attn is not None else None
        attention = attention and attn_f is not None
        if attn_f is None and cross_attention:
            raise ValueError("cross_attention builds its layers from `attn`, which is null")
        if not attention and mlp == "none" and not cross_attention:
            raise ValueError("a transformer layer needs attention or an mlp")
        if identity_attn and attention:
            raise ValueError("identity_attn replaces self-attention: it needs attention=false")
        if moe_every and mlp == "none":
            raise ValueError("moe_every needs an mlp to replace")
        if not 0 <= return_hidden <= depth:
            raise ValueError(f"return_hidden={return_hidden} must be between 0 and depth={depth}")
        # The attention's own heads / head_dim (written in `attn = Attention(...)`) win over the trunk's.
        eff_heads = attn_f.get("heads", heads) if attn_f is not None else heads
        eff_head_dim = attn_f.get("head_dim", head_dim) if attn_f is not None else head_dim
        if eff_head_dim is None and (attention or cross_attention) and dim % eff_heads:
            # the heads would silently cover only heads * (dim // heads) of the width
            raise ValueError(f"heads ({eff_heads}) must divide dim ({dim}), or give head_dim")
        self.dim, self.depth, self.causal = dim, depth, causal
        self.moe_aux_scale, self.return_hidden = moe_aux_scale, return_hidden
        ffn_f = None if mlp == "none" else _MLP[mlp]() if isinstance(mlp, str) else as_factory(mlp)
        # MoE experts are always gated (`moe_act`: SiLU or GELU), so they get the GLU size unless `hidden` is given.
        moe_hidden = hidden or mlp_hidden(dim, mlp_ratio, True, multiple_of)
        # Stochastic depth grows linearly to `drop_path` at the last layer (plain Python: no
        # tensor may be read while building on the meta device).
        rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path] * depth
        common = dict(init=init, init_std=init_std)
        attn_ctx = dict(
            dim=dim, heads=heads, head_dim=head_dim, kv_heads=kv_heads, qkv_bias=qkv_bias,
            proj_bias=proj_bias, fused_qkv=fused_qkv, qk_norm=qk_norm, norm=norm, norm_eps=norm_eps,
            depth=depth, **common,
        )  # fmt: skip
        cross_f = None
        if cross_attention:  # the same component, less its position encoding
            cross_f = copy.copy(attn_f)  # keeps a builder's Factory subclass (its span for errors)
            cross_f.kwargs = {k: v for k, v in attn_f.kwargs.items() if k != "pos"}
        ffn_ctx = dict(dim=dim, hidden=hidden, mlp_ratio=mlp_ratio, multiple_of=multiple_of, bias=mlp_bias,
                       init_depth=depth, num_experts=num_experts, top_k=top_k, capacity_factor=capacity_factor,
                       **common)
        adapter_f = as_factory(adapter) if adapter is not None else None

        def adapter_pair() -> tuple[nn.Module | None, nn.Module | None]:
            if adapter_f is None:
                return None, None
            return adapter_f(dim=dim, **common), adapter_f(dim=dim, **common)

        layers = []
        for i in range(depth):
            a = attn_f(**attn_ctx, causal=causal) if attention else None
            cross = cross_f(**attn_ctx, cross=True, context_dim=context_dim) if cross_f is not None else None
            if ffn_f is None:
                ffn = None
            elif moe_every and (i + 1) % moe_every == 0:
                ffn = MoE(dim, moe_hidden, num_experts, top_k, capacity_factor, init_depth=depth, act=moe_act,
                          expert_init=moe_init, normalize=moe_normalize, **common)
            else:
                ffn = ffn_f(**ffn_ctx)
            layers.append(TransformerLayer(dim, a, cross, ffn, norm, norm_eps, norm_fp32, rates[i], identity_attn,
                                           *adapter_pair()))
        if share_layers and layers:  # ALBERT: the first layer's weights, applied depth times (one unit)
            if moe_every:
                raise ValueError("share_layers repeats the first layer, so it cannot mix MoE and dense layers")
            layers = [layers[0]] * depth
        self.layers = nn.ModuleList(layers)
        self.num_moe = sum(isinstance(layer.mlp, MoE) for layer in layers)
        # One table for the layers whose attention takes the trunk's 1-D RoPE (none of its own `pos`).
        shared = any(isinstance(layer.attn, Attention) and layer.attn.pos is None for layer in layers)
        rope_hd = eff_head_dim or dim // eff_heads
        self.rope = RotaryEmbedding(rope_hd, rope_theta, rope_scaling) if rope and shared else None
        self.norm = make_norm(norm if final_norm else "none", dim, norm_eps, norm_fp32)

    def tp_plan(self) -> dict[str, ParallelStyle]:
        return collect_tp_plan(self)

    def read_rows(self, pick: Callable[..., int | torch.Tensor | None]) -> None:
        """Let training compute only the rows `pick` names in the last layer (see the class doc)."""
        if self.return_hidden or self.num_moe and isinstance(self.layers[-1].mlp, MoE):
            raise ValueError("a trunk that returns hidden layers or ends in a MoE layer computes every row")
        self._pick_rows = pick

    _pick_rows: Callable[..., int | torch.Tensor | None] | None = None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
        **pool_inputs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rope = self.rope(x.shape[1]) if self.rope is not None else None
        aux = torch.zeros((), device=x.device, dtype=torch.float32)
        kept: list[torch.Tensor] = []
        first_kept = self.depth - self.return_hidden
        rows = self._pick_rows(**pool_inputs) if self._pick_rows is not None and self.training else None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if rows is not None and i == last:
                x, a = layer(x, mask=mask, rope=rope, context=context, rows=rows)
            else:
                x, a = layer(x, mask=mask, rope=rope, context=context)
            if a is not None:
                aux = aux + a
            if self.return_hidden and i >= first_kept:
                kept.append(x)
        hidden = self.norm(torch.stack(kept).mean(dim=0)) if kept else None
        return self.norm(x), aux * (self.moe_aux_scale / max(self.num_moe, 1)), hidden

    # A layer range, for pipeline stages cut between layers (l3m.dist.pp); `forward` is
    # run_layers(0, depth) then finish, when return_hidden is 0.

    def run_layers(self, x: torch.Tensor, start: int, stop: int, mask: torch.Tensor | None = None,
                   context: torch.Tensor | None = None,
                   aux: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers `start..stop-1` on `x`: the new `x` and the running sum of MoE balancing terms."""
        rope = self.rope(x.shape[1]) if self.rope is not None else None
        if aux is None:
            aux = torch.zeros((), device=x.device, dtype=torch.float32)
        for i in range(start, stop):
            x, a = self.layers[i](x, mask=mask, rope=rope, context=context)
            if a is not None:
                aux = aux + a
        return x, aux

    def finish(self, x: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """What `forward` returns after the last layer (without `return_hidden`)."""
        return self.norm(x), aux * (self.moe_aux_scale / max(self.num_moe, 1)), None


def _decoder_signature() -> inspect.Signature:
    params = [p for n, p in inspect.signature(Transformer.__init__).parameters.items() if n != "cross_attention"]
    return inspect.Signature(params)


@register("block")
class CrossAttentionDecoder(Transformer):
    """A Transformer whose every layer also cross-attends to `context` (e.g. an image encoder's
    tokens); its constructor is Transformer's less `cross_attention`."""

    splits_between_layers = True  # its forward too is run_layers (with `context`), then finish

    def __init__(self, *args, **kwargs):
        super().__init__(*args, cross_attention=True, **kwargs)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None, **pool_inputs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return super().forward(x, mask=mask, context=context, **pool_inputs)


CrossAttentionDecoder.__init__.__signature__ = _decoder_signature()
CrossAttentionDecoder.__init__.__annotations__ = {
    k: v for k, v in Transformer.__init__.__annotations__.items() if k != "cross_attention"
}

"""torchtitan `Llama3Model` weights in and out of a Llama-shaped l3m model.

The l3m model is what `l3m.interop.llama` accepts (one `TokenEmbedding`, a causal RMSNorm/SwiGLU
`Transformer` with RoPE, one `LMHead`). torchtitan's state dict names its fused `wqkv` as the
separate `wq`/`wk`/`wv` (its own save hook splits them), and its Llama 3 rotates pairs of
*adjacent* channels (`ComplexRoPE`: channels 2i and 2i+1 of a head are one complex number),
where l3m rotates channel i with channel i + head_dim/2. So besides the renaming, the rows of
`wq` and `wk` are interleaved within each head; q.k, and so the model, is unchanged by it. A tied
model keeps both `tok_embeddings.weight` and `lm_head.weight`, as torchtitan's state dict does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from l3m.interop.llama import LlamaLayout, llama_layout
from l3m.interop.mapping import Rule, fuse_qkv, rename, split_qkv, to_foreign, to_native


def to_interleaved(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of q or k for rotate-half RoPE -> rows for adjacent-pair (complex) RoPE, per head."""
    rest = w.shape[1:]
    return w.reshape(-1, 2, head_dim // 2, *rest).transpose(1, 2).reshape(-1, *rest)


def to_rotate_half(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Inverse of `to_interleaved`."""
    rest = w.shape[1:]
    return w.reshape(-1, head_dim // 2, 2, *rest).transpose(1, 2).reshape(-1, *rest)


def titan_rules(layout: LlamaLayout) -> list[Rule]:
    """The name table between a torchtitan `Llama3Model` state dict and the l3m model."""
    kvh, hd = layout.kv_heads, layout.head_dim

    def native(ts: list[torch.Tensor]) -> list[torch.Tensor]:  # wq, wk, wv -> l3m
        q, k, v = to_rotate_half(ts[0], hd), to_rotate_half(ts[1], hd), ts[2]
        return [fuse_qkv(q, k, v, kvh, hd)] if layout.fused else [q, k, v]

    def foreign(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        q, k, v = split_qkv(ts[0], kvh, hd) if layout.fused else ts
        return [to_interleaved(q, hd), to_interleaved(k, hd), v]

    rules = [
        rename("tok_embeddings.weight", layout.embed),
        rename("norm.weight", f"{layout.trunk}.norm.weight"),
        rename("lm_head.weight", f"{layout.head}.weight"),
    ]
    for i in range(layout.depth):
        t, n = f"layers.{i}", f"{layout.trunk}.layers.{i}"
        rules += [
            rename(f"{t}.attention_norm.weight", f"{n}.norm1.weight"),
            rename(f"{t}.ffn_norm.weight", f"{n}.norm2.weight"),
            rename(f"{t}.attention.wo.weight", f"{n}.attn.proj.weight"),
            rename(f"{t}.feed_forward.w1.weight", f"{n}.mlp.w1.weight"),
            rename(f"{t}.feed_forward.w2.weight", f"{n}.mlp.w2.weight"),
            rename(f"{t}.feed_forward.w3.weight", f"{n}.mlp.w3.weight"),
        ]
        qkv = tuple(f"{t}.attention.qkv_linear.w{p}.weight" for p in "qkv")
        mine = (f"{n}.attn.qkv.weight",) if layout.fused else tuple(f"{n}.attn.{p}.weight" for p in "qkv")
        rules.append(Rule(qkv, mine, native, foreign))
    return rules


def titan_to_l3m(weights: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A torchtitan Llama 3 state dict renamed (and regrouped, re-paired for RoPE) for `model`."""
    return to_native(weights, titan_rules(llama_layout(model)), (), "torchtitan Llama import")


def l3m_to_titan(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s l3m-named tensors under torchtitan's names."""
    layout = llama_layout(model)
    state = dict(state)
    if layout.tied:  # an l3m state dict may hold the tied head once, under the embedding's name
        state.setdefault(f"{layout.head}.weight", state[layout.embed])
    return to_foreign(state, titan_rules(layout), (), "torchtitan Llama export")


def titan_model(model: nn.Module, max_seq_len: int = 4096, attention: str = "sdpa") -> nn.Module:
    """A torchtitan `Llama3Model` of `model`'s architecture holding its weights (torchtitan must be
    installed). `attention = "sdpa"` is torchtitan's maskless `ScaledDotProductAttention` (causal,
    whole sequences), the one backend that trains on a CPU; `"flex"` is its language-model default
    (CUDA only for training; `Llama3Model.get_attention_masks` must then build the masks)."""
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention
    from torchtitan.models.common.config_utils import make_ffn_config, make_gqa_config
    from torchtitan.models.llama3 import Llama3Model, Llama3TransformerBlock

    if attention not in ("sdpa", "flex"):
        raise ValueError(f"unknown attention {attention!r}; expected sdpa or flex")
    lay = llama_layout(model)
    vocab, dim = model.get_parameter(lay.embed).shape
    trunk = model.get_submodule(lay.trunk)
    heads = lay.kv_heads * trunk.layers[0].attn.rep
    hidden = trunk.layers[0].mlp.w1.out_features
    scaling: dict = {}
    if lay.rope_scaling:
        factor, low, high, original = lay.rope_scaling
        scaling = dict(scaling="llama", scaling_factor=factor, low_freq_factor=low, high_freq_factor=high,
                       original_max_position_embeddings=int(original))
    rope = ComplexRoPE.Config(dim=lay.head_dim, max_seq_len=max_seq_len, theta=lay.rope_theta, **scaling)
    inner = ScaledDotProductAttention.Config() if attention == "sdpa" else FlexAttention.Config()
    keep: dict = {}  # every parameter is overwritten by the copy below

    def norm() -> RMSNorm.Config:
        return RMSNorm.Config(normalized_shape=dim, eps=lay.norm_eps, param_init=keep)

    layers = [
        Llama3TransformerBlock.Config(
            attention_norm=norm(), ffn_norm=norm(),
            attention=make_gqa_config(dim=dim, n_heads=heads, n_kv_heads=lay.kv_heads,
                                      head_dim=None if lay.head_dim * heads == dim else lay.head_dim,
                                      wqkv_param_init=keep, wo_param_init=keep, inner_attention=inner,
                                      fuse_qkv=True, rope=rope),
            feed_forward=make_ffn_config(dim=dim, hidden_dim=hidden, w1_param_init=keep, w2w3_param_init=keep),
        )
        for _ in range(lay.depth)
    ]  # fmt: skip
    config = Llama3Model.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=lay.tied, layers=layers, norm=norm(),
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init=keep),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=keep),
    )  # fmt: skip
    peer = config.build()
    weights = l3m_to_titan(model.state_dict(), model)
    peer.load_state_dict(weights, strict=True)
    return peer

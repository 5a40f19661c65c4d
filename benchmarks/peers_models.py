"""The peers of `peers.py`: for each l3m model, the other library's model of the same architecture
holding the same weights, how to run it, its loss, and the names its gradients go by.

Each `Family` builds its peer from a live l3m model (sizes read off the model, weights copied with
l3m's own converters in `l3m.interop`), so the comparison needs no file and no download.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Family:
    """One comparison: an l3m example against one peer library."""

    name: str  # as printed: llama, titan, vit, clip
    dist: str  # the peer's distribution (pip name)
    module: str  # what must import for the peer to be built
    outputs: tuple[str, ...]  # the l3m model's outputs that the peer's forward returns, in order
    build: Callable[[nn.Module], nn.Module]
    forward: Callable[[nn.Module, dict[str, Any]], tuple[Any, ...]]
    loss: Callable[[tuple[Any, ...], dict[str, Any], float], Any]
    foreign: Callable[[dict[str, Any], nn.Module], dict[str, Any]]  # l3m-named tensors to the peer's names
    cuda_only: str = ""  # why it cannot train on the CPU (then it runs only when asked for, on CUDA)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(family: Family) -> str | None:
    """Why the peer cannot be built here (one line), or None."""
    if version(family.dist) is None:
        return f"{family.dist} is not installed (pip install {family.dist})"
    try:
        importlib.import_module(family.module)
    except Exception as e:  # a peer that installs but does not import (versions) is skipped, not fatal
        return f"{family.dist} {version(family.dist)} does not import: {type(e).__name__}: {str(e).splitlines()[0]}"
    return None


# -- Llama: transformers and torchtitan ----------------------------------------------------------


def hf_llama(model: nn.Module) -> nn.Module:
    """A `LlamaForCausalLM` (sdpa attention, its default) with the l3m model's sizes and weights."""
    import transformers

    from l3m.interop.llama import l3m_to_llama, llama_layout

    lay = llama_layout(model)
    trunk = model.get_submodule(lay.trunk)
    attn = trunk.layers[0].attn
    vocab, dim = model.get_parameter(lay.embed).shape
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=trunk.layers[0].mlp.w1.out_features,
        num_hidden_layers=lay.depth, num_attention_heads=lay.kv_heads * attn.rep, num_key_value_heads=lay.kv_heads,
        head_dim=lay.head_dim, rms_norm_eps=lay.norm_eps, tie_word_embeddings=lay.tied, attention_bias=False,
        max_position_embeddings=4096, attn_implementation="sdpa",
        rope_parameters={"rope_type": "default", "rope_theta": lay.rope_theta},
    )  # fmt: skip
    peer = transformers.LlamaForCausalLM(cfg)
    missing_, unexpected = peer.load_state_dict(l3m_to_llama(model.state_dict(), model), strict=False)
    if unexpected or set(missing_) - ({"lm_head.weight"} if lay.tied else set()):
        raise AssertionError(f"weights do not fit the Llama: missing {missing_}, unexpected {unexpected}")
    assert not lay.tied or peer.lm_head.weight is peer.model.embed_tokens.weight
    return peer


def titan_llama(model: nn.Module) -> nn.Module:
    """torchtitan's `Llama3Model` (its complex RoPE; its maskless sdpa attention, see peers.py)."""
    from l3m.interop.torchtitan_llama import titan_model

    return titan_model(model, max_seq_len=4096, attention="sdpa")


def titan_flex_llama(model: nn.Module) -> nn.Module:
    """torchtitan's `Llama3Model` as its trainer builds it for language models: FlexAttention."""
    from l3m.interop.torchtitan_llama import titan_model

    return titan_model(model, max_seq_len=4096, attention="flex")


def titan_flex_forward(peer: nn.Module, batch: dict[str, Any]) -> tuple[Any, ...]:
    """One document per row: positions 0..n-1 give torchtitan's causal + document block mask, built
    each step as its trainer builds it for each batch."""
    import torch

    tokens = batch["tokens"]
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return (peer(tokens, attention_masks=peer.get_attention_masks(positions)),)


def lm_loss(out: tuple[Any, ...], batch: dict[str, Any], smoothing: float) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(out[0].flatten(0, 1).float(), batch["targets"].flatten())


def _llama_grads(grads: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    from l3m.interop.llama import l3m_to_llama

    return l3m_to_llama(grads, model)


def _titan_grads(grads: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    from l3m.interop.torchtitan_llama import l3m_to_titan

    return l3m_to_titan(grads, model)


# -- ViT: timm -----------------------------------------------------------------------------------


def timm_vit(model: nn.Module) -> nn.Module:
    """A timm `VisionTransformer` with the l3m model's sizes and weights."""
    from timm.models.vision_transformer import VisionTransformer

    from l3m.interop.timm_vit import l3m_to_vit, vit_layout

    lay = vit_layout(model)
    layer = model.get_submodule(lay.trunk).layers[0]
    patch = model.get_submodule(lay.patch)
    dim = lay.heads * lay.head_dim
    side = round((model.get_parameter(f"{lay.pos}.pos").shape[-2] - 1) ** 0.5) * patch.patch
    head = model.get_submodule(f"{lay.classifier}.fc")
    peer = VisionTransformer(
        img_size=side, patch_size=patch.patch, num_classes=head.out_features, embed_dim=dim, depth=lay.depth,
        num_heads=lay.heads, mlp_ratio=layer.mlp.w1.out_features / dim, qkv_bias=True,
        proj_bias=layer.attn.proj.bias is not None, fc_norm=True, global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=layer.norm1.eps if hasattr(layer.norm1, "eps") else 1e-6),
    )  # fmt: skip
    peer.load_state_dict(l3m_to_vit(model.state_dict(), model), strict=True)
    return peer


def vit_loss(out: tuple[Any, ...], batch: dict[str, Any], smoothing: float) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(out[0].float(), batch["label"], label_smoothing=smoothing)


def _vit_grads(grads: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    from l3m.interop.timm_vit import l3m_to_vit

    return l3m_to_vit(grads, model)


# -- CLIP: open_clip -----------------------------------------------------------------------------


def open_clip_clip(model: nn.Module) -> nn.Module:
    """An `open_clip.CLIP` (custom vision/text configs, nothing downloaded) with the l3m model's weights."""
    import open_clip

    from l3m.interop.openclip import l3m_to_open_clip, open_clip_config

    peer = open_clip.CLIP(**open_clip_config(model))
    peer.load_state_dict(l3m_to_open_clip(model.state_dict(), model), strict=True)
    return peer


def clip_loss(out: tuple[Any, ...], batch: dict[str, Any], smoothing: float) -> Any:
    from open_clip.loss import ClipLoss

    return ClipLoss()(*out)


def _clip_grads(grads: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    from l3m.interop.openclip import l3m_to_open_clip

    return l3m_to_open_clip(grads, model)


FAMILIES = {
    f.name: f
    for f in (
        Family("llama", "transformers", "transformers", ("logits",), hf_llama,
               lambda p, b: (p(b["tokens"]).logits,), lm_loss, _llama_grads),
        Family("titan", "torchtitan", "torchtitan.models.llama3", ("logits",), titan_llama,
               lambda p, b: (p(b["tokens"]),), lm_loss, _titan_grads),
        Family("titanflex", "torchtitan", "torchtitan.models.llama3", ("logits",), titan_flex_llama,
               titan_flex_forward, lm_loss, _titan_grads,
               cuda_only="FlexAttention has no backward on the CPU (eager or compiled); its compiled kernels "
                         "autotune (max_autotune), which takes minutes on a GPU"),
        Family("vit", "timm", "timm", ("logits",), timm_vit, lambda p, b: (p(b["image"]),), vit_loss, _vit_grads),
        Family("clip", "open_clip_torch", "open_clip", ("image_emb", "text_emb", "logit_scale"), open_clip_clip,
               lambda p, b: tuple(p(b["image"], b["text"])), clip_loss, _clip_grads),
    )
}  # fmt: skip

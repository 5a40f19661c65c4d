"""Hugging Face `LlamaForCausalLM` weights in and out of a Llama-shaped l3m model.

The l3m model is any file with one `TokenEmbedding`, one `Transformer` (RMSNorm, SwiGLU, causal
attention with RoPE, GQA through `kv_heads`) and one `LMHead`, such as `models/llama.l3m`; its
block names do not matter, the blocks are found by class. The conversion is a renaming, plus a
regrouping of q/k/v rows when the Transformer fuses them (`fused_qkv = true`). Hugging Face
stores q/k for the rotate-half RoPE that l3m's `apply_rope` also uses, so no row is permuted
within a head. A tied checkpoint (no `lm_head.weight`) fills the head from the embedding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from l3m.interop.mapping import (
    Rule,
    fuse_qkv,
    layer_problems,
    linear_rules,
    one_block,
    rename,
    split_qkv,
    to_foreign,
    to_native,
)
from l3m.model.blocks.embeddings import TokenEmbedding
from l3m.model.blocks.heads import LMHead
from l3m.model.blocks.norms import RMSNorm
from l3m.model.blocks.transformer import Transformer

# Tensors a Llama checkpoint may carry that are not weights (old files saved RoPE's frequencies).
IGNORED = ("*rotary_emb.inv_freq",)


@dataclass(frozen=True)
class LlamaLayout:
    """Where a Llama's tensors live in one l3m model, and the attention shape they need."""

    embed: str  # the embedding matrix's parameter name
    trunk: str  # the Transformer's parameter prefix
    head: str  # the LM head's parameter prefix
    depth: int
    kv_heads: int
    head_dim: int
    fused: bool
    tied: bool
    rope_theta: float
    rope_scaling: tuple[float, ...] | None
    norm_eps: float


def _check_transformer(t: Transformer, where: str) -> None:
    """Fail with what to change in the file when the Transformer is not Llama-shaped."""
    problems = []
    if not t.causal:
        problems.append("causal = true")
    if t.rope is None:
        problems.append("rope = true")
    if not isinstance(t.norm, RMSNorm):
        problems.append("norm = rmsnorm with final_norm = true")
    for layer in t.layers:
        problems += layer_problems(layer, "swiglu", RMSNorm)
    if problems:
        raise ValueError(f"{where} is not Llama-shaped; it needs {', '.join(dict.fromkeys(problems))}")


def llama_layout(model: nn.Module) -> LlamaLayout:
    """Find the embedding, the Transformer and the head of a Llama-shaped l3m model."""
    epath, _ = one_block(model, TokenEmbedding, "a Llama")
    tpath, trunk = one_block(model, Transformer, "a Llama")
    hpath, _ = one_block(model, LMHead, "a Llama")
    _check_transformer(trunk, f"Transformer {tpath!r}")
    attn = trunk.layers[0].attn
    k_rows = attn.qkv.out_features // (attn.rep + 2) if attn.fused else attn.k.out_features
    embed = f"{epath}.emb.weight"
    tied = any(a == f"{hpath}.proj.weight" and b == embed for a, b in model.ties)
    scaling = trunk.rope.scaling
    return LlamaLayout(
        embed=embed, trunk=tpath, head=f"{hpath}.proj", depth=len(trunk.layers),
        kv_heads=k_rows // attn.head_dim, head_dim=attn.head_dim, fused=attn.fused, tied=tied,
        rope_theta=trunk.rope.theta, rope_scaling=tuple(scaling) if scaling else None,
        norm_eps=trunk.norm.eps,
    )  # fmt: skip


def llama_rules(layout: LlamaLayout, prefix: str = "model.") -> list[Rule]:
    """The name table between a `LlamaForCausalLM` state dict and the l3m model."""
    kvh, hd = layout.kv_heads, layout.head_dim
    rules = [
        rename(f"{prefix}embed_tokens.weight", layout.embed),
        rename(f"{prefix}norm.weight", f"{layout.trunk}.norm.weight"),
    ]
    rules += linear_rules("lm_head", layout.head)
    for i in range(layout.depth):
        hf, l3 = f"{prefix}layers.{i}", f"{layout.trunk}.layers.{i}"
        rules += [
            rename(f"{hf}.input_layernorm.weight", f"{l3}.norm1.weight"),
            rename(f"{hf}.post_attention_layernorm.weight", f"{l3}.norm2.weight"),
            *linear_rules(f"{hf}.self_attn.o_proj", f"{l3}.attn.proj"),
            *linear_rules(f"{hf}.mlp.gate_proj", f"{l3}.mlp.w1"),
            *linear_rules(f"{hf}.mlp.up_proj", f"{l3}.mlp.w3"),
            *linear_rules(f"{hf}.mlp.down_proj", f"{l3}.mlp.w2"),
        ]
        for n in ("weight", "bias"):
            qkv = tuple(f"{hf}.self_attn.{p}_proj.{n}" for p in "qkv")
            if layout.fused:
                rules.append(Rule(qkv, (f"{l3}.attn.qkv.{n}",),
                                  lambda ts: [fuse_qkv(*ts, kvh, hd)], lambda ts: split_qkv(ts[0], kvh, hd)))
            else:
                rules += [rename(name, f"{l3}.attn.{p}.{n}") for name, p in zip(qkv, "qkv")]
    return rules


def _prefix(weights: Mapping[str, torch.Tensor]) -> str:
    """"model." for a LlamaForCausalLM state dict, "" for a bare LlamaModel's."""
    return "" if any(k.startswith(("embed_tokens.", "layers.")) for k in weights) else "model."


def llama_to_l3m(weights: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama state dict renamed (and regrouped) for `model`.

    Without `lm_head.weight` (a tied checkpoint) the head is the embedding. If `model` ties its
    head to its embedding, the checkpoint's head must equal its embedding.
    """
    layout = llama_layout(model)
    out = to_native(weights, llama_rules(layout, _prefix(weights)), IGNORED, "Llama import")
    head = f"{layout.head}.weight"
    if layout.embed in out:
        if head not in out:
            out[head] = out[layout.embed]
        elif layout.tied and not torch.equal(out[head], out[layout.embed]):
            raise ValueError(
                "the checkpoint's lm_head differs from its embedding, but the l3m model ties them "
                '(set the head\'s tie = "")'
            )
    return out


def l3m_to_llama(
    state: Mapping[str, torch.Tensor], model: nn.Module, prefix: str = "model."
) -> dict[str, torch.Tensor]:
    """`model`'s l3m-named tensors (its state dict, or a file of them) under Hugging Face names.

    A tied model is written as Hugging Face writes one: without `lm_head.weight`.
    """
    layout = llama_layout(model)
    state = dict(state)
    if layout.tied:
        state.pop(f"{layout.head}.weight", None)
    return to_foreign(state, llama_rules(layout, prefix), (), "Llama export")


def check_llama_config(config: Mapping, model: nn.Module) -> list[str]:
    """What in a Hugging Face `config.json` the weights cannot tell but the l3m model disagrees
    with (RoPE, norm epsilon, activation, tying); an empty list when they agree."""
    layout = llama_layout(model)
    rope = dict(config.get("rope_parameters") or {})
    legacy = config.get("rope_scaling") or {}
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind = rope.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    params = {**legacy, **rope}
    problems = []
    if not math.isclose(float(rope["rope_theta"]), layout.rope_theta, rel_tol=1e-9):
        problems.append(f"rope_theta is {rope['rope_theta']}, the l3m model's is {layout.rope_theta}")
    if kind == "llama3":
        want = tuple(float(params[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                 "original_max_position_embeddings"))
        if layout.rope_scaling != want:
            have = list(layout.rope_scaling) if layout.rope_scaling else "none"
            problems.append(f"llama3 RoPE needs rope_scaling = {list(want)} (the l3m model has {have})")
    elif kind != "default":
        problems.append(f"rope type {kind!r} is not supported")
    elif layout.rope_scaling:
        problems.append("the checkpoint's RoPE is not scaled, the l3m model's is (rope_scaling = null)")
    eps = float(config.get("rms_norm_eps", 1e-6))
    if not math.isclose(eps, layout.norm_eps, rel_tol=1e-9):
        problems.append(f"rms_norm_eps is {eps}, the l3m model's norm_eps is {layout.norm_eps}")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {config['hidden_act']!r}, the l3m model's SwiGLU uses silu")
    if bool(config.get("tie_word_embeddings", False)) and not layout.tied:
        problems.append('the checkpoint ties its head to the embedding, the l3m model not (tie = "embed")')
    return problems


def read_config(weights_path: str | Path) -> dict | None:
    """The `config.json` beside a checkpoint file, if there is one."""
    p = Path(weights_path)
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else None

"""timm `VisionTransformer` weights in and out of a ViT-shaped l3m model.

The l3m model has one `PatchEmbed`, a `ClsToken` (with timm's register tokens, if any), a learned
`PosEmbed`, one `Transformer` (LayerNorm, GELU MLP, no RoPE, not causal) and a `Classifier`; the
blocks are found by class, so their names do not matter. What must agree, the file says:

- timm's `pos_embed` covers the cls token unless `no_embed_class` (then `PosEmbed(offset = 1)`);
- its biases (qkv, proj, MLP) need `qkv_bias`, `proj_bias`, `mlp_bias = true` on the Transformer;
- `global_pool = "token"` normalises every token with `norm` (the Transformer's final norm), then
  takes the cls token (`ClsPool`); `"avg"` averages the patch tokens (`AvgPool(start = 1)`, the
  Transformer with `final_norm = false`) and normalises with `fc_norm` (the Classifier's norm);
- its LayerNorm eps (1e-6 by default) is `norm_eps`, which the weights cannot tell.

The conversion is a renaming, plus a regrouping of the fused qkv rows: timm stores `[q, k, v]`
each over all heads, l3m `[q_h, k_h, v_h]` per head (or three separate projections).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
from l3m.model.blocks.embeddings import ClsToken, PatchEmbed, PosEmbed
from l3m.model.blocks.heads import Classifier
from l3m.model.blocks.norms import LayerNorm
from l3m.model.blocks.transformer import Transformer


@dataclass(frozen=True)
class VitLayout:
    """Parameter prefixes of a timm ViT's parts in one l3m model (None: the model has no such part)."""

    patch: str
    cls: str | None
    pos: str | None
    trunk: str
    classifier: str | None
    depth: int
    heads: int
    head_dim: int
    fused: bool


def _check_transformer(t: Transformer, where: str) -> None:
    problems = []
    if t.causal or t.rope is not None:
        problems.append("causal = false and rope = false")
    for layer in t.layers:
        problems += layer_problems(layer, "gelu", LayerNorm, qk_norm=True)
        if getattr(layer.attn, "causal", False):
            problems.append("causal = false")
    if problems:
        raise ValueError(f"{where} is not a timm ViT's trunk; it needs {', '.join(dict.fromkeys(problems))}")


def vit_layout(model: nn.Module) -> VitLayout:
    """Find the parts of a ViT-shaped l3m model."""
    what = "a timm ViT"
    patch, _ = one_block(model, PatchEmbed, what)
    cls = one_block(model, ClsToken, what, optional=True)
    pos = one_block(model, PosEmbed, what, optional=True)
    tpath, trunk = one_block(model, Transformer, what)
    head = one_block(model, Classifier, what, optional=True)
    if pos is not None and pos[1].kind != "learned":
        raise ValueError(f"PosEmbed {pos[0]!r} must be kind = learned to hold timm's pos_embed")
    _check_transformer(trunk, f"Transformer {tpath!r}")
    attn = trunk.layers[0].attn
    q_rows = attn.qkv.out_features // 3 if attn.fused else attn.q.out_features
    if attn.rep != 1:
        raise ValueError(f"Transformer {tpath!r} has kv_heads < heads; timm's ViT has one per head")
    return VitLayout(
        patch=patch,
        cls=cls[0] if cls else None,
        pos=pos[0] if pos else None,
        trunk=tpath,
        classifier=head[0] if head else None,
        depth=len(trunk.layers),
        heads=q_rows // attn.head_dim,
        head_dim=attn.head_dim,
        fused=attn.fused,
    )


def _qkv_rules(timm: str, l3m: str, fused: bool, heads: int, head_dim: int) -> list[Rule]:
    """timm's `[q; k; v]` qkv (weight or bias) to l3m's per-head groups or separate q, k, v."""
    if fused:
        return [Rule((timm,), (l3m.format("qkv"),),
                     lambda ts: [fuse_qkv(*ts[0].chunk(3), heads, head_dim)],
                     lambda ts: [torch.cat(split_qkv(ts[0], heads, head_dim))])]  # fmt: skip
    separate = tuple(l3m.format(p) for p in "qkv")
    return [Rule((timm,), separate, lambda ts: list(ts[0].chunk(3)), lambda ts: [torch.cat(ts)])]


# Inside layer i: timm's module -> l3m's (weight and bias each).
_LAYER = (
    ("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attn.proj"), ("attn.q_norm", "attn.q_norm"),
    ("attn.k_norm", "attn.k_norm"), ("mlp.fc1", "mlp.w1"), ("mlp.fc2", "mlp.w2"),
)  # fmt: skip


def vit_rules(layout: VitLayout) -> list[Rule]:
    """The name table between a timm `VisionTransformer` state dict and the l3m model."""
    rules = [
        *linear_rules("patch_embed.proj", layout.patch),
        *linear_rules("patch_embed.norm", f"{layout.patch}.norm"),
    ]
    if layout.cls:
        rules += [rename("cls_token", f"{layout.cls}.cls"), rename("reg_token", f"{layout.cls}.registers")]
    if layout.pos:
        rules.append(rename("pos_embed", f"{layout.pos}.pos"))
    rules += linear_rules("norm", f"{layout.trunk}.norm")
    if layout.classifier:
        rules += linear_rules("fc_norm", f"{layout.classifier}.norm")
        rules += linear_rules("head", f"{layout.classifier}.fc")
    for i in range(layout.depth):
        t, l3 = f"blocks.{i}", f"{layout.trunk}.layers.{i}"
        for a, b in _LAYER:
            rules += linear_rules(f"{t}.{a}", f"{l3}.{b}")
        for n in ("weight", "bias"):
            qkv = f"{t}.attn.qkv.{n}"
            rules += _qkv_rules(qkv, f"{l3}.attn.{{}}.{n}", layout.fused, layout.heads, layout.head_dim)
    return rules


def vit_to_l3m(weights: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm ViT state dict renamed (and regrouped) for `model`."""
    return to_native(weights, vit_rules(vit_layout(model)), (), "timm ViT import")


def l3m_to_vit(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s l3m-named tensors under timm's names."""
    return to_foreign(state, vit_rules(vit_layout(model)), (), "timm ViT export")

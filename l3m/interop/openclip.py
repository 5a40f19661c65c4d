"""open_clip `CLIP` weights in and out of a CLIP-shaped l3m model (`models/clip.l3m`'s two towers).

open_clip's own towers are pre-LayerNorm transformers with GELU MLPs and biases everywhere, so
the l3m model must be written (or overridden) in that form; `models/clip.l3m` itself (RMSNorm,
SwiGLU, no biases, a norm on the patch tokens) has no open_clip equivalent. What must agree:

- image tower: `PatchEmbed(bias = false, norm = none)` (open_clip's conv has no bias; build it
  with `no_ln_pre = True`, since l3m has no norm between positions and trunk), a `ClsToken`
  without registers, a learned `PosEmbed` over cls + patches, `ClsPool` (`pool_type = "tok"`,
  the final norm on every token: `final_ln_after_pool = False`);
- text tower: `TokenEmbedding`, a learned `PosEmbed`, a causal trunk, `EosPool(which = first)`
  (`pool_type = "eos"` with the same `eos_id`);
- both trunks: `mlp = gelu, norm = layernorm, qkv_bias = proj_bias = mlp_bias = true`, one
  key/value head per head, a final norm; `ClipProjection(bias = false)` heads, one holding the
  logit scale. LayerNorm eps (open_clip: 1e-5) is `norm_eps`, which the weights cannot tell.

`open_clip_config(model)` gives the `open_clip.CLIP` arguments of that architecture. The conversion
is a renaming, plus: the fused `in_proj` rows `[q; k; v]` regrouped per head as l3m fuses them,
the projections transposed (open_clip multiplies `x @ proj`), the class token and positions
reshaped to l3m's `[1, N, dim]` and the scalar logit scale to `[1]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from l3m.interop.mapping import (
    Rule,
    blocks_of,
    fuse_qkv,
    layer_problems,
    linear_rules,
    one_block,
    rename,
    split_qkv,
    to_foreign,
    to_native,
)
from l3m.model.blocks.embeddings import ClsToken, PatchEmbed, PosEmbed, TokenEmbedding
from l3m.model.blocks.heads import ClipProjection
from l3m.model.blocks.norms import LayerNorm
from l3m.model.blocks.pooling import ClsPool, EosPool
from l3m.model.blocks.transformer import Transformer


@dataclass(frozen=True)
class TrunkLayout:
    path: str
    depth: int
    heads: int
    head_dim: int
    fused: bool
    mlp_ratio: float
    norm_eps: float


@dataclass(frozen=True)
class ClipLayout:
    """Parameter prefixes of open_clip's parts in one l3m CLIP model."""

    patch: str
    cls: str
    image_pos: str
    image: TrunkLayout
    image_proj: str
    embed: str
    text_pos: str
    text: TrunkLayout
    text_proj: str
    scale: str  # the ClipProjection holding the logit scale
    eos_id: int


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _split_by_tower(model: nn.Module, kind: type, image: str, text: str) -> tuple[str, str, nn.Module, nn.Module]:
    """The two blocks of class `kind`, the image tower's first (the one nearer the PatchEmbed)."""
    found = blocks_of(model, kind)
    if len(found) != 2:
        raise ValueError(f"an open_clip CLIP needs two {kind.__name__} blocks (one per tower), found {len(found)}")
    (pa, a), (pb, b) = found
    if _common(pa, image) - _common(pa, text) < _common(pb, image) - _common(pb, text):
        (pa, a), (pb, b) = (pb, b), (pa, a)
    if _common(pa, image) <= _common(pa, text) or _common(pb, text) <= _common(pb, image):
        raise ValueError(f"cannot tell which {kind.__name__} belongs to the image tower ({pa}, {pb})")
    return pa, pb, a, b


def _trunk(t: Transformer, path: str, causal: bool) -> TrunkLayout:
    problems = []
    if t.causal != causal:
        problems.append(f"causal = {'true' if causal else 'false'}")
    if t.rope is not None:
        problems.append("rope = false")
    if not isinstance(t.norm, LayerNorm):
        problems.append("final_norm = true with norm = layernorm")
    for layer in t.layers:
        own = layer_problems(layer, "gelu", LayerNorm)
        problems += own
        if own:
            continue
        attn = layer.attn
        if attn.rep != 1:
            problems.append("kv_heads = heads")
        elif attn.proj.bias is None or (attn.qkv.bias if attn.fused else attn.q.bias) is None:
            problems.append("qkv_bias = true and proj_bias = true")
        if layer.mlp.w1.bias is None:
            problems.append("mlp_bias = true")
    if problems:
        raise ValueError(f"Transformer {path!r} is not an open_clip tower; it needs {', '.join(dict.fromkeys(problems))}")
    attn, mlp = t.layers[0].attn, t.layers[0].mlp
    q_rows = attn.qkv.out_features // 3 if attn.fused else attn.q.out_features
    return TrunkLayout(path=path, depth=len(t.layers), heads=q_rows // attn.head_dim, head_dim=attn.head_dim,
                       fused=attn.fused, mlp_ratio=mlp.w1.out_features / t.dim, norm_eps=t.norm.eps)


def clip_layout(model: nn.Module) -> ClipLayout:
    """Find the parts of a CLIP-shaped l3m model, or say what keeps it from being open_clip's."""
    patch_path, patch = one_block(model, PatchEmbed, "an open_clip CLIP")
    embed_path, _ = one_block(model, TokenEmbedding, "an open_clip CLIP")
    cls_path, cls = one_block(model, ClsToken, "an open_clip CLIP")
    one_block(model, ClsPool, "an open_clip CLIP")
    _, eos = one_block(model, EosPool, "an open_clip CLIP")
    ipos, tpos, ipos_b, tpos_b = _split_by_tower(model, PosEmbed, patch_path, embed_path)
    itr, ttr, itr_b, ttr_b = _split_by_tower(model, Transformer, patch_path, embed_path)
    iproj, tproj, iproj_b, tproj_b = _split_by_tower(model, ClipProjection, patch_path, embed_path)
    problems = []
    if patch.bias is not None or not isinstance(patch.norm, nn.Identity):
        problems.append("PatchEmbed(bias = false, norm = none)")
    if cls.registers is not None:
        problems.append("ClsToken without registers")
    if any(p.kind != "learned" or p.offset for p in (ipos_b, tpos_b)):
        problems.append("learned PosEmbed with offset = 0")
    if eos.which != "first":
        problems.append("EosPool(which = first)")
    if any(p.proj.bias is not None for p in (iproj_b, tproj_b)):
        problems.append("ClipProjection(bias = false)")
    if (iproj_b.logit_scale is None) == (tproj_b.logit_scale is None):
        problems.append("a logit scale on exactly one ClipProjection")
    if problems:
        raise ValueError(f"the model is not an open_clip CLIP; it needs {', '.join(problems)}")
    return ClipLayout(
        patch=patch_path, cls=cls_path, image_pos=ipos, image=_trunk(itr_b, itr, causal=False), image_proj=iproj,
        embed=f"{embed_path}.emb.weight", text_pos=tpos, text=_trunk(ttr_b, ttr, causal=True), text_proj=tproj,
        scale=iproj if iproj_b.logit_scale is not None else tproj, eos_id=eos.eos_id,
    )  # fmt: skip


def open_clip_overrides(name: str = "clip") -> list[str]:
    """Overrides that put the towers of a `models/clip.l3m` CLIP declared as `name` (examples/clip_digits.l3m's
    `clip`) in open_clip's form: LayerNorm, GELU MLP, biases, no norm or bias on the patch embedding."""
    return [
        f"{name}.image.preprocessor.patches.norm=none", f"{name}.image.preprocessor.patches.bias=false",
        *(f"{name}.{tower}.trunk.blocks.{k}" for tower in ("image", "text") for k in (
            "mlp=gelu", "norm=layernorm", "qkv_bias=true", "proj_bias=true", "mlp_bias=true")),
    ]  # fmt: skip


def open_clip_config(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments of `open_clip.CLIP` for the architecture of `model` (nothing is downloaded)."""
    lay = clip_layout(model)
    patch = model.get_submodule(lay.patch)
    grid = model.get_submodule(lay.image_pos).num - 1
    side = round(grid**0.5)
    vocab, width = model.get_parameter(lay.embed).shape
    proj = model.get_submodule(lay.image_proj).proj
    vision = dict(layers=lay.image.depth, width=lay.image.heads * lay.image.head_dim, head_width=lay.image.head_dim,
                  mlp_ratio=lay.image.mlp_ratio, patch_size=patch.patch, image_size=side * patch.patch,
                  no_ln_pre=True, pool_type="tok", final_ln_after_pool=False,
                  norm_kwargs={"eps": lay.image.norm_eps})
    text = dict(context_length=model.get_submodule(lay.text_pos).num, vocab_size=vocab, width=width,
                heads=lay.text.heads, layers=lay.text.depth, mlp_ratio=lay.text.mlp_ratio, pool_type="eos",
                eos_id=lay.eos_id, norm_kwargs={"eps": lay.text.norm_eps})
    return {"embed_dim": proj.out_features, "vision_cfg": vision, "text_cfg": text, "quick_gelu": False}


def _qkv_rules(foreign: str, native: str, t: TrunkLayout) -> list[Rule]:
    """open_clip's `in_proj_*` rows `[q; k; v]` to l3m's per-head groups or separate q, k, v."""
    rules = []
    for f, n in (("in_proj_weight", "weight"), ("in_proj_bias", "bias")):
        if t.fused:
            rules.append(Rule((f"{foreign}.{f}",), (f"{native}.qkv.{n}",),
                              lambda ts: [fuse_qkv(*ts[0].chunk(3), t.heads, t.head_dim)],
                              lambda ts: [torch.cat(split_qkv(ts[0], t.heads, t.head_dim))]))  # fmt: skip
        else:
            rules.append(Rule((f"{foreign}.{f}",), tuple(f"{native}.{p}.{n}" for p in "qkv"),
                              lambda ts: list(ts[0].chunk(3)), lambda ts: [torch.cat(ts)]))  # fmt: skip
    return rules


def _trunk_rules(foreign: str, t: TrunkLayout) -> list[Rule]:
    rules = []
    for i in range(t.depth):
        f, n = f"{foreign}.resblocks.{i}", f"{t.path}.layers.{i}"
        for a, b in (("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.out_proj", "attn.proj"), ("mlp.c_fc", "mlp.w1"),
                     ("mlp.c_proj", "mlp.w2")):
            rules += linear_rules(f"{f}.{a}", f"{n}.{b}")
        rules += _qkv_rules(f"{f}.attn", f"{n}.attn", t)
    return rules


def _transposed(foreign: str, native: str) -> Rule:
    return Rule((foreign,), (native,), lambda ts: [ts[0].t()], lambda ts: [ts[0].t()])


def clip_rules(layout: ClipLayout) -> list[Rule]:
    """The name table between an open_clip `CLIP` state dict and the l3m model."""
    return [
        rename("visual.conv1.weight", f"{layout.patch}.weight"),
        Rule(("visual.class_embedding",), (f"{layout.cls}.cls",), lambda ts: [ts[0].reshape(1, 1, -1)],
             lambda ts: [ts[0].reshape(-1)]),
        Rule(("visual.positional_embedding",), (f"{layout.image_pos}.pos",), lambda ts: [ts[0][None]],
             lambda ts: [ts[0][0]]),
        *_trunk_rules("visual.transformer", layout.image),
        *linear_rules("visual.ln_post", f"{layout.image.path}.norm"),
        _transposed("visual.proj", f"{layout.image_proj}.proj.weight"),
        rename("token_embedding.weight", layout.embed),
        Rule(("positional_embedding",), (f"{layout.text_pos}.pos",), lambda ts: [ts[0][None]],
             lambda ts: [ts[0][0]]),
        *_trunk_rules("transformer", layout.text),
        *linear_rules("ln_final", f"{layout.text.path}.norm"),
        _transposed("text_projection", f"{layout.text_proj}.proj.weight"),
        Rule(("logit_scale",), (f"{layout.scale}.logit_scale",), lambda ts: [ts[0].reshape(1)],
             lambda ts: [ts[0].reshape(())]),
    ]


def open_clip_to_l3m(weights: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict renamed (and regrouped) for `model`."""
    return to_native(weights, clip_rules(clip_layout(model)), (), "open_clip import")


def l3m_to_open_clip(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s l3m-named tensors under open_clip's names."""
    return to_foreign(state, clip_rules(clip_layout(model)), (), "open_clip export")

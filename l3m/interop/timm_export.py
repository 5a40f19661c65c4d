"""A timm model folder for a ViT-shaped l3m model: `model.safetensors` (timm `VisionTransformer`
names) and `config.json` in timm's hub layout, whose `model_args` rebuild the network:

    args = json.load(open("OUT/config.json"))["model_args"]
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **args)
    model.load_state_dict(safetensors.torch.load_file("OUT/model.safetensors"))  # strict
    # or in one step: timm.create_model("local-dir:OUT", pretrained=True)

The arguments are read off the built model: patch size, channels, image size (from the position
table), width, depth, heads, MLP ratio, biases, q/k norms, cls and register tokens, where the
position table starts (`no_embed_class`), pooling (`ClsPool` -> "token", `AvgPool` -> "avg",
none -> "") and where the final norm sits (the trunk's `norm` or the classifier's `fc_norm`).

timm has one LayerNorm epsilon (1e-6) and normalises either before pooling or after it, not
both. A Classifier that normalises again after a normed trunk (models/vit_imagenet.l3m) is left
out: the export is the trunk (`num_classes = 0`), whose pooled features match l3m's, and the
command says so. Biases timm has and l3m lacks are written as zeros (the same function).
Anything else that does not map (RoPE, causal attention, SwiGLU, RMSNorm, another epsilon, a
block timm has no place for) is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from l3m.interop.mapping import blocks_of, to_foreign
from l3m.interop.timm_vit import VitLayout, vit_layout, vit_rules
from l3m.model.blocks.embeddings import ClsToken, PatchEmbed, PosEmbed
from l3m.model.blocks.heads import Classifier
from l3m.model.blocks.norms import LayerNorm
from l3m.model.blocks.pooling import AvgPool, ClsPool
from l3m.model.blocks.transformer import Transformer

ARCHITECTURE = "vit_base_patch16_224"  # any registered ViT: model_args override all of its shape
TIMM_EPS = 1e-6


@dataclass
class TimmExport:
    """What to write: timm's constructor arguments, the classifier kept or not, and notes."""

    args: dict
    layout: VitLayout
    notes: list[str] = field(default_factory=list)


def _norms_of(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if not isinstance(m, nn.Identity) and "norm" in n.split(".")[-1]]


def _check_norm(where: str, norm: nn.Module) -> None:
    if isinstance(norm, nn.Identity):
        return
    if not isinstance(norm, LayerNorm):
        raise ValueError(f"{where} is {type(norm).__name__}; timm's ViT uses LayerNorm")
    if not math.isclose(norm.eps, TIMM_EPS, rel_tol=1e-9):
        raise ValueError(f"{where} has eps {norm.eps}; timm's ViT LayerNorm has eps {TIMM_EPS} (norm_eps = 1e-6)")


def _refuse_extra_blocks(model: nn.Module) -> None:
    kinds = (PatchEmbed, ClsToken, PosEmbed, Transformer, ClsPool, AvgPool, Classifier)
    other = [(p, type(b).__name__) for p, b in blocks_of(model, nn.Module) if not isinstance(b, kinds)]
    if other:
        raise ValueError("blocks with no place in timm's VisionTransformer: "
                         + ", ".join(f"{p} ({k})" for p, k in other))
    for kind in (ClsPool, AvgPool):
        if len(blocks_of(model, kind)) > 1:
            raise ValueError(f"more than one {kind.__name__}: timm's ViT pools once")


def timm_export(model: nn.Module, image_size: int | None = None) -> TimmExport:
    """timm's `VisionTransformer` arguments for `model` (ValueError naming what does not map).

    `image_size` is used when the model has no position table to tell it (default 224)."""
    _refuse_extra_blocks(model)
    layout = vit_layout(model)
    patch: PatchEmbed = model.get_submodule(layout.patch)
    trunk: Transformer = model.get_submodule(layout.trunk)
    attn, mlp = trunk.layers[0].attn, trunk.layers[0].mlp
    cls = model.get_submodule(layout.cls) if layout.cls else None
    regs = cls.registers.shape[1] if cls is not None and cls.registers is not None else 0
    prefix = (1 + regs) if cls is not None else 0
    notes: list[str] = []

    if not isinstance(patch.norm, nn.Identity):
        _check_norm(f"PatchEmbed {layout.patch!r} norm", patch.norm)
    for i, layer in enumerate(trunk.layers):
        for name, norm in _norms_of(layer):
            _check_norm(f"{layout.trunk}.layers.{i}.{name}", norm)
    _check_norm(f"{layout.trunk}.norm", trunk.norm)

    dim = trunk.dim
    hidden = mlp.w1.out_features
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(f"an MLP of {hidden} for width {dim}: timm sizes it as int(dim * mlp_ratio)")
    if layout.head_dim * layout.heads != dim:
        raise ValueError(f"head_dim {layout.head_dim} x {layout.heads} heads != width {dim}; timm's ViT needs "
                         "head_dim = dim // heads")

    # Position table: over [prefix tokens + patches] (timm's default) or the patches only.
    pos_kind, no_embed_class, patches = "none", False, None
    if layout.pos:
        pos: PosEmbed = model.get_submodule(layout.pos)
        pos_kind = "learn"
        if pos.offset == 0 and pos.num > prefix:
            patches = pos.num - prefix
        elif pos.offset == prefix:
            patches, no_embed_class = pos.num, True
        else:
            raise ValueError(f"PosEmbed {layout.pos!r} starts at token {pos.offset} of {prefix} cls/register "
                             "tokens; timm's table starts at 0 (covering them) or after them (no_embed_class)")
    if patches is not None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"a position table of {patches} patches is not a square grid")
        img_size = side * patch.patch
    else:
        img_size = image_size or 224
        notes.append(f"no position table: img_size {img_size} taken from the data")

    # Pooling, the final norm and the classifier.
    pools = blocks_of(model, (ClsPool, AvgPool))
    head = model.get_submodule(layout.classifier) if layout.classifier else None
    final = not isinstance(trunk.norm, nn.Identity)
    global_pool, fc_norm, keep_head = "", False, head is not None
    if pools:
        pool = pools[0][1]
        if isinstance(pool, ClsPool):
            if cls is None:
                raise ValueError("ClsPool without a ClsToken: timm pools the class token it adds")
            global_pool = "token"
        else:
            if pool.start != prefix:
                raise ValueError(f"AvgPool(start = {pool.start}) with {prefix} cls/register tokens: timm averages "
                                 f"the patch tokens (start = {prefix})")
            global_pool = "avg"
    head_norm = head.norm if head is not None else nn.Identity()
    if not isinstance(head_norm, nn.Identity):
        if final or not pools:
            keep_head = False
            notes.append(f"Classifier {layout.classifier!r} is not exported: it normalises again after the "
                         "trunk's final norm, which timm's ViT cannot; the export is the trunk (num_classes = 0)")
        else:
            _check_norm(f"Classifier {layout.classifier!r} norm", head_norm)
            fc_norm, final = True, True
    if keep_head and not pools:
        keep_head = False
        notes.append(f"Classifier {layout.classifier!r} is not exported: it is not after a ClsPool or AvgPool")
    if head is not None and keep_head and head.fc.weight.shape[0] == 0:
        keep_head = False
    if not keep_head and layout.classifier:
        layout = VitLayout(**{**layout.__dict__, "classifier": None})

    bias_of = (lambda lin: lin.bias is not None)  # noqa: E731
    qkv_bias = any(bias_of(a) for layer in trunk.layers
                   for a in ([layer.attn.qkv] if layer.attn.fused else [layer.attn.q, layer.attn.k, layer.attn.v]))
    proj_bias = any(bias_of(layer.attn.proj) or bias_of(layer.mlp.w1) or bias_of(layer.mlp.w2)
                    for layer in trunk.layers)
    args = {
        "img_size": img_size,
        "patch_size": patch.patch,
        "in_chans": patch.in_chans,
        "num_classes": int(head.fc.weight.shape[0]) if keep_head else 0,
        "global_pool": global_pool,
        "embed_dim": dim,
        "depth": layout.depth,
        "num_heads": layout.heads,
        "mlp_ratio": ratio,
        "qkv_bias": qkv_bias,
        "qk_norm": bool(attn.qk_norm),
        "proj_bias": proj_bias,
        "class_token": cls is not None,
        "pos_embed": pos_kind,
        "no_embed_class": no_embed_class,
        "reg_tokens": regs,
        "final_norm": final,
        "fc_norm": fc_norm,
    }
    if not isinstance(patch.norm, nn.Identity):
        args["embed_norm_layer"] = "layernorm"
    return TimmExport(args, layout, notes)


def _needs_bias(name: str, args: Mapping) -> bool:
    """Whether timm's module owning `name` (a `.weight`) has a bias under `args`."""
    module = name.rsplit(".", 1)[0]
    leaf = module.split(".")[-1]
    if "norm" in leaf or module in ("head", "patch_embed.proj"):
        return True  # LayerNorms; the head; the patch projection (no pre_norm)
    if leaf == "qkv":
        return bool(args["qkv_bias"])
    if leaf in ("proj", "fc1", "fc2"):
        return bool(args["proj_bias"])
    return False


def timm_state(state: Mapping[str, torch.Tensor], model: nn.Module, export: TimmExport) -> dict[str, torch.Tensor]:
    """`state` under timm's names (the classifier left out when the export is the trunk), with
    zero biases where timm has one and the l3m model not."""
    drop = ()
    if export.layout.classifier is None:
        full = vit_layout(model)
        if full.classifier:
            drop = (f"{full.classifier}.",)
    kept = {k: v for k, v in state.items() if not k.startswith(drop)} if drop else dict(state)
    out = to_foreign(kept, vit_rules(export.layout), (), "timm ViT export")
    for name in [n for n in out if n.endswith(".weight")]:
        bias = name[: -len("weight")] + "bias"
        if bias not in out and _needs_bias(name, export.args):
            out[bias] = torch.zeros(out[name].shape[0], dtype=out[name].dtype)
    return out


def timm_config(export: TimmExport, mean=None, std=None) -> dict:
    """timm's hub `config.json` (what `save_config_for_hf` writes) for the exported model."""
    a = export.args
    cfg = {
        "input_size": [a["in_chans"], a["img_size"], a["img_size"]],
        "fixed_input_size": True,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "num_classes": a["num_classes"],
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    if mean is not None and std is not None:
        cfg["mean"], cfg["std"] = list(mean), list(std)
    out = {"architecture": ARCHITECTURE, "num_classes": a["num_classes"], "num_features": a["embed_dim"]}
    if a["global_pool"]:
        out["global_pool"] = a["global_pool"]
    return {**out, "model_args": dict(a), "pretrained_cfg": cfg}


def write_timm(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    mean=None,
    std=None,
    dtype: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Write the timm folder (see the module doc); returns (files written, notes)."""
    from l3m.interop.hf import cast, write_json, write_weights_folder

    export = timm_export(model, image_size)
    tensors, _ = cast(timm_state(state, model, export), dtype)
    out = write_weights_folder(out_dir, tensors, metadata)
    write_json(out / "config.json", timm_config(export, mean, std))
    return ["model.safetensors", "config.json"], export.notes

"""The shipped supervised ViT (models/vit_imagenet.l3m) is the original ml-l3m ViT
(configs/supervised_imagenet/001_vit_large_imagenet.yaml): same outputs and loss for the same weights,
same full-size parameter count, same initialisation (fixture: tools/parity/vit.py)."""

from __future__ import annotations

import pytest
import torch
from parity_fixtures import TOLERANCE, Fixture, load_exact, max_abs_diff, rename, twin
from parity_init_stats import compare_groups

import l3m
from l3m.model.criterion import build_criterion

SOURCE = """l3m 1
import "@MODELS@/vit_imagenet.l3m" as vit
data {{ train: Synthetic(kind = image, image_size = {image}, num_classes = {classes}, batch_size = 2) -> image, label }}
model vit = vit.ViT(dim = {dim}, depth = {depth}, heads = {heads}, patch = {patch}, image_size = {image},
                    num_classes = {classes}) image -> logits
loss ce: ClassificationCE() logits, label -> loss
"""

RULES = [
    (r"preprocessor\.patchifier\.proj\.(weight|bias)", r"preprocessor.patches.\1"),
    (r"preprocessor\.cls_token", "preprocessor.cls.cls"),
    (r"preprocessor\.pos_embed", "preprocessor.pos.pos"),
    (r"trunk\.blocks\.(\d+)\.norm_1\.(weight|bias)", r"trunk.blocks.layers.\1.norm1.\2"),
    (r"trunk\.blocks\.(\d+)\.norm_2\.(weight|bias)", r"trunk.blocks.layers.\1.norm2.\2"),
    (r"trunk\.blocks\.(\d+)\.attn\.([qkv])_proj\.(weight|bias)", r"trunk.blocks.layers.\1.attn.\2.\3"),
    (r"trunk\.blocks\.(\d+)\.attn\.proj\.weight", r"trunk.blocks.layers.\1.attn.proj.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc1\.weight", r"trunk.blocks.layers.\1.mlp.w1.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc2\.weight", r"trunk.blocks.layers.\1.mlp.w2.weight"),
    (r"trunk\.post_trunk_norm\.(weight|bias)", r"trunk.blocks.norm.\1"),
    (r"head\.norm\.(weight|bias)", r"head.fc.norm.\1"),
    (r"head\.linear\.(weight|bias)", r"head.fc.fc.\1"),
]


def build(tmp_path, c: dict, classes: int):
    source = SOURCE.format(dim=c["embed_dim"], depth=c["num_blocks"], heads=c["num_heads"], patch=c["patch_size"],
                           image=c["img_size"], classes=classes)
    model = twin(tmp_path, source)
    criterion = build_criterion(l3m.load(str(tmp_path / "twin.l3m")).program)
    return model, criterion


@pytest.fixture(scope="module")
def fx() -> Fixture:
    return Fixture.load("vit")


def test_outputs_and_loss_match_the_original(tmp_path, fx):
    c = fx.meta["constants"]
    model, criterion = build(tmp_path, c, fx.meta["nb_classes"])
    load_exact(model, rename(fx.weights, RULES, root="vit"))
    with torch.no_grad():
        d = model({"image": fx.inputs["image"]})
        loss, logs = criterion({**d, "label": fx.inputs["target"]})
    diffs = {"logits": max_abs_diff(d["logits"], fx.outputs["logits"]), "loss": max_abs_diff(loss, fx.outputs["loss"])}
    print(f"vit parity max|diff|: {diffs}")
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
    assert fx.outputs["logits"].abs().max() > 1.0  # the randomised weights give non-trivial logits


def test_full_size_parameter_count_is_the_original():
    from helpers import ROOT

    model = l3m.load(str(ROOT / "models" / "vit_imagenet.l3m")).build_model()
    assert sum(p.numel() for p in model.parameters()) == Fixture.load("vit").meta["full_size_param_count"]


GROUPS = {
    "patch weight": (r"preprocessor\.patchifier\.proj\.weight", r".*patches\.weight"),
    "patch bias": (r"preprocessor\.patchifier\.proj\.bias", r".*patches\.bias"),
    "cls token": (r"preprocessor\.cls_token", r".*cls\.cls"),
    "positions": (r"preprocessor\.pos_embed", r".*pos\.pos"),
    "q/k/v weights": (r".*attn\.[qkv]_proj\.weight", r".*attn\.[qkv]\.weight"),
    "q/k/v biases": (r".*attn\.[qkv]_proj\.bias", r".*attn\.[qkv]\.bias"),
    "attn proj weights": (r".*attn\.proj\.weight", r".*attn\.proj\.weight"),
    "mlp fc1": (r".*mlp\.fc1\.weight", r".*mlp\.w1\.weight"),
    "mlp fc2": (r".*mlp\.fc2\.weight", r".*mlp\.w2\.weight"),
    "norm gains": (r"(trunk|head).*norm.*\.weight", r"(trunk|head).*norm.*\.weight"),
    "norm biases": (r"(trunk|head).*norm.*\.bias", r"(trunk|head).*norm.*\.bias"),
    "head weight": (r"head\.linear\.weight", r"head\.fc\.fc\.weight"),
    "head bias": (r"head\.linear\.bias", r"head\.fc\.fc\.bias"),
}


def test_initialisation_matches_the_original(tmp_path, fx):
    c = fx.meta["init_statistics_constants"]
    torch.manual_seed(c["seed"])
    model, _ = build(tmp_path, c, c["nb_classes"])
    compared = compare_groups(fx.meta["init_statistics"], model.state_dict(), GROUPS, root="vit")
    assert len(compared) == len(GROUPS)

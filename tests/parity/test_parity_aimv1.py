"""models/aimv1.l3m computes what the original AIMv1-600M (ml-l3m configs/aimv1/001_aim_v1_600M.yaml) computes:
the original's weights at a tiny size give the same encoder features, pixel predictions and loss
(tests/data/parity/aimv1, made by tools/parity/aimv1.py); the frozen sin-cos tables have the original's
layout; the full-size parameter count and the init statistics are the original's."""

from __future__ import annotations

import pytest
import torch
from aim_parity import build_twin, check_init_statistics, param_count, run
from helpers import ROOT
from parity_fixtures import TOLERANCE, Fixture, load_exact, max_abs_diff, rename

import l3m

TWIN = """l3m 1
import "@MODELS@/aimv1.l3m" as aimv1

data {{
  train:  Synthetic(kind = image, image_size = {img_size}, batch_size = 3) -> image, label
  prefix: RandomPrefixLength(low = 1, high = {num_patches} - 1)    image -> prefix_len
}}

model aim = aimv1.AIMv1(dim = {vision_embed_dim}, depth = {vision_num_blocks}, heads = {vision_num_heads},
                        patch = {patch_size}, image_size = {img_size}, dec_dim = {head_embed_dim},
                        dec_depth = {head_num_blocks}, dec_hidden = 4 * {head_embed_dim})
            image, prefix_len -> pixels

# The loss line of models/aimv1.l3m.
{losses}
"""

# The original's names -> l3m's (first match wins; None: not a parameter in l3m).
RULES = [
    (r"preprocessor\.blocks\.0\.pos_embed", None),  # frozen sin-cos tables: l3m's are buffers
    (r"head\.decoder_pos_embed", None),
    (r"preprocessor\.blocks\.0\.patchifier\.proj\.(weight|bias)", r"preprocessor.patches.\1"),
    (r"preprocessor\.blocks\.0\.patchifier\.norm\.(weight|bias)", r"preprocessor.patches.norm.\1"),
    (r"trunk\.blocks\.(\d+)\.attn\.(q|k|v)_proj\.weight", r"trunk.encoder.layers.\1.attn.\2.weight"),
    (r"trunk\.blocks\.(\d+)\.attn\.proj\.weight", r"trunk.encoder.layers.\1.attn.proj.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc(\d)\.weight", r"trunk.encoder.layers.\1.mlp.w\2.weight"),
    (r"trunk\.blocks\.(\d+)\.norm_(\d)\.(weight|bias)", r"trunk.encoder.layers.\1.norm\2.\3"),
    (r"trunk\.post_trunk_norm\.(weight|bias)", r"trunk.encoder.norm.\1"),
    (r"head\.decoder_projection\.(weight|bias)", r"head.proj.\1"),
    (r"head\.decoder_blocks\.(\d+)\.mlp\.fc(\d)\.weight", r"head.decoder.layers.\1.mlp.w\2.weight"),
    (r"head\.decoder_blocks\.(\d+)\.norm_(\d)\.(weight|bias)", r"head.decoder.layers.\1.norm\2.\3"),
    (r"head\.decoder_norm\.(weight|bias)", r"head.decoder.norm.\1"),
    (r"head\.decoder_pred\.(weight|bias)", r"head.out.\1"),
]

# Init groups (name fragments of l3m's parameters).
GROUPS = {
    "patch embedding": "patches.weight", "patch bias": "patches.bias", "norms": "norm", "q/k/v": "attn.",
    "mlp": "mlp.w", "decoder projection": "head.proj", "pixel head": "head.out",
}


def _source(constants: dict) -> str:
    lines = [ln for ln in (ROOT / "models" / "aimv1.l3m").read_text().splitlines() if ln.startswith("loss ")]
    assert len(lines) == 1, lines
    losses = lines[0].replace("patch = patch", f"patch = {constants['patch_size']}")
    return TWIN.format(**constants, losses=losses)


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture.load("aimv1")


def test_aimv1_matches_the_original(tmp_path, fixture):
    model, criterion = build_twin(tmp_path, _source(fixture.meta["constants"]))
    load_exact(model, rename(fixture.weights, RULES, root="aim"))
    # The frozen sin-cos tables: l3m rebuilds them; they must be the original's (layout included).
    tables = {
        "encoder": max_abs_diff(model.aim.preprocessor.pos.pos, fixture.weights["preprocessor.blocks.0.pos_embed"]),
        "decoder": max_abs_diff(model.aim.head.dec_pos.pos, fixture.weights["head.decoder_pos_embed"]),
    }
    out, total, logs = run(model, criterion, {"image": fixture.inputs["image"],
                                             "prefix_len": fixture.inputs["prefix_len"]})
    want = fixture.outputs
    diffs = {
        "features": max_abs_diff(out["aim.x"], want["features"]),  # the def's internal key x
        "pixels": max_abs_diff(out["pixels"], want["pixels"]),
        "loss": max_abs_diff(logs["pixel"], want["loss"]),
        "total": max_abs_diff(total, want["loss"]),
    }
    print("aimv1 max |diff|:", {k: f"{v:.2e}" for k, v in {**diffs, **tables}.items()})
    assert max(tables.values()) <= TOLERANCE, tables
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert total.item() > 0.1


def test_aimv1_full_size_parameter_count(fixture):
    model = l3m.load(str(ROOT / "models" / "aimv1.l3m")).build_model()  # on the meta device
    tables = sum(b.numel() for name, b in model.named_buffers() if name.endswith("pos.pos"))
    # The original lists its two frozen sin-cos tables among its parameters; l3m keeps them as buffers.
    assert tables == fixture.meta["full_size_frozen_param_count"] == 917_504
    assert param_count(model) == fixture.meta["full_size_param_count"] - tables == 1_087_643_724


def test_aimv1_init_statistics(tmp_path, fixture):
    torch.manual_seed(0)
    model, _ = build_twin(tmp_path, _source(fixture.meta["init_statistics_constants"]))
    stats = fixture.meta["init_statistics"]
    named = rename({k: torch.empty(0) for k in stats}, RULES, root="aim")
    original = {new: stats[old] for old, new in zip([k for k in stats if "pos_embed" not in k], named, strict=True)}
    assert set(original) == set(model.state_dict())
    counted = check_init_statistics(model.state_dict(), original, GROUPS)
    assert counted["q/k/v"] == 8

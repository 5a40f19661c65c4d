"""models/aimv2.l3m computes what the original AIMv2 (ml-l3m configs/aimv2/001_aimv2_hfdata.yaml) computes:
the original's weights at a tiny size give the same encoder features, text logits, pixel predictions and
losses (tests/data/parity/aimv2, made by tools/parity/aimv2.py); the full-size parameter count and the
init statistics are the original's."""

from __future__ import annotations

import pytest
import torch
from aim_parity import build_twin, check_init_statistics, param_count, run
from helpers import ROOT
from parity_fixtures import TOLERANCE, Fixture, load_exact, max_abs_diff, rename

import l3m

TWIN = """l3m 1
import "@MODELS@/aimv2.l3m" as aimv2

data {{
  train:  Synthetic(kind = image_text, image_size = {img_size}, vocab = {text_vocab_size}, seq_len = {context_length},
                    batch_size = 3) -> image, text
  prefix: RandomPrefixLength(low = 1, high = {num_patches} - 1)    image -> prefix_len
}}

model aimv2 {{
  model encoder = aimv2.Encoder(dim = {vision_embed_dim}, depth = {vision_num_blocks}, heads = {vision_num_heads},
                                patch = {patch_size}, image_size = {img_size})
                  image, prefix_len -> features
  model decoder = aimv2.Decoder(enc_dim = {vision_embed_dim}, dim = {text_embed_dim}, depth = {text_num_blocks},
                                heads = {text_num_heads}, vocab = {text_vocab_size}, text_len = {context_length},
                                patch = {patch_size}, image_size = {img_size})
                  features, text -> text_logits, pixels
}}

# The loss lines of models/aimv2.l3m.
{losses}
"""

# The original's names -> l3m's (first match wins).
RULES = [
    (r"models\.image_encoder\.preprocessor\.blocks\.0\.patchifier\.proj\.(weight|bias)",
     r"encoder.preprocessor.patches.\1"),
    (r"models\.image_encoder\.preprocessor\.blocks\.0\.patchifier\.norm\.weight", "encoder.preprocessor.patches.norm.weight"),
    (r"models\.image_encoder\.preprocessor\.blocks\.0\.pos_embed", "encoder.preprocessor.pos.pos"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.blocks\.(\d+)\.attn\.(q|k|v)_proj\.weight",
     r"\1.trunk.blocks.layers.\2.attn.\3.weight"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.blocks\.(\d+)\.attn\.proj\.weight",
     r"\1.trunk.blocks.layers.\2.attn.proj.weight"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.blocks\.(\d+)\.mlp\.fc(\d)\.weight",
     r"\1.trunk.blocks.layers.\2.mlp.w\3.weight"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.blocks\.(\d+)\.norm_(\d)\.weight",
     r"\1.trunk.blocks.layers.\2.norm\3.weight"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.post_trunk_norm\.weight", r"\1.trunk.blocks.norm.weight"),
    (r"models\.text_decoder\.preprocessor\.vision_preprocessor\.module\.(weight|bias)", r"decoder.preprocessor.proj.\1"),
    (r"models\.text_decoder\.preprocessor\.text_preprocessor\.text_embedding\.weight", "decoder.preprocessor.embed.emb.weight"),
    (r"models\.text_decoder\.preprocessor\.text_preprocessor\.cls_token", "decoder.preprocessor.cls.cls"),
    (r"models\.text_decoder\.preprocessor\.text_preprocessor\.positional_embedding", "decoder.preprocessor.pos.pos"),
    (r"models\.text_decoder\.head\.blocks\.0\.linear\.weight", "decoder.head.lm.proj.weight"),
    (r"models\.text_decoder\.head\.blocks\.1\.linear\.weight", "decoder.head.pix.weight"),
]

# Init groups (name fragments of l3m's parameters after renaming).
GROUPS = {
    "patch embedding": "patches.weight", "patch bias": "patches.bias", "norms": "norm", "patch positions":
    "encoder.preprocessor.pos.pos", "q/k/v": "attn.", "mlp": "mlp.w", "decoder input projection": "preprocessor.proj",
    "token embedding": "embed.emb", "cls token": "cls.cls", "text positions": "decoder.preprocessor.pos.pos",
    "heads": "head.",
}


def _losses() -> str:
    lines = [ln for ln in (ROOT / "models" / "aimv2.l3m").read_text().splitlines() if ln.startswith("loss ")]
    assert len(lines) == 2, lines
    return "\n".join(lines).replace("patch = patch", "patch = {patch_size}")


def _source(constants: dict) -> str:
    return TWIN.format(**constants, losses=_losses().format(**constants))


def _state(weights: dict) -> dict:
    state = rename(weights, RULES, root="aimv2")
    # The rules keep the original's model names where they capture them; l3m's are `encoder`/`decoder`.
    out = {}
    for k, v in state.items():
        k = k.replace("image_encoder.", "encoder.").replace("text_decoder.", "decoder.")
        if k.endswith("decoder.preprocessor.pos.pos"):
            v = v[None]  # the original's text table is [1 + ctx, D]; l3m's PosEmbed keeps [1, n, D]
        out[k] = v
    return out


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture.load("aimv2")


def test_aimv2_matches_the_original(tmp_path, fixture):
    model, criterion = build_twin(tmp_path, _source(fixture.meta["constants"]))
    load_exact(model, _state(fixture.weights))
    inputs = {"image": fixture.inputs["image"], "text": fixture.inputs["text"],
              "prefix_len": fixture.inputs["prefix_len"]}
    out, total, logs = run(model, criterion, inputs)
    want = fixture.outputs
    diffs = {
        "features": max_abs_diff(out["features"], want["features"]),
        # The original scores cls + the caption positions but the last (LLMCrossEntropyLoss drops it).
        "text_logits": max_abs_diff(out["text_logits"], want["text_logits"][:, :-1]),
        "pixels": max_abs_diff(out["pixels"], want["pixels"]),
        "loss_pixel": max_abs_diff(logs["pixel"], want["loss_pixel"]),
        "loss_text": max_abs_diff(logs["text"], want["loss_text"]),
        "loss": max_abs_diff(total, want["loss"]),
    }
    print("aimv2 max |diff|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert total.item() > 0.1  # a real loss, not an empty mean


def test_aimv2_full_size_parameter_count(fixture):
    model = l3m.load(str(ROOT / "models" / "aimv2.l3m")).build_model()  # on the meta device
    assert param_count(model) == fixture.meta["full_size_param_count"] == 530_632_704


def test_aimv2_init_statistics(tmp_path, fixture):
    torch.manual_seed(0)
    model, _ = build_twin(tmp_path, _source(fixture.meta["init_statistics_constants"]))
    original = _state_names(fixture.meta["init_statistics"])
    counted = check_init_statistics(model.state_dict(), original, GROUPS)
    assert set(original) == set(model.state_dict())
    assert counted["q/k/v"] == 16


def _state_names(stats: dict) -> dict:
    """The original's statistics keyed by l3m's names (the text table's shape gains a leading 1)."""
    return {k: stats[orig] for orig, k in zip(stats, _state({n: torch.empty(0) for n in stats}), strict=True)}

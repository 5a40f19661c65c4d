"""The shipped CLIP (models/clip.l3m) is the original ml-l3m CLIP (configs/clip/001_clip_hfdata.yaml): same
trunk tokens, embeddings, logit scale and loss for the same weights (EOS pooling at the position the original
picks, the logit-scale clamp), same full-size parameter count, same initialisation
(fixture: tools/parity/clip.py)."""

from __future__ import annotations

import math

import pytest
import torch
from parity_fixtures import TOLERANCE, Fixture, load_exact, max_abs_diff, rename, twin
from parity_init_stats import compare_groups

import l3m
from l3m.model.criterion import build_criterion

SOURCE = """l3m 1
import "@MODELS@/clip.l3m" as clip
data {{ train: Synthetic(kind = image_text, image_size = {image}, vocab = {vocab}, seq_len = {text_len},
                       batch_size = 2) -> image, text }}
model clip {{
  model image = clip.ImageTower(dim = {vdim}, depth = {vdepth}, heads = {vheads}, embed_dim = {tdim},
                                patch = {patch}, image_size = {image})  image -> image_emb, logit_scale
  model text  = clip.TextTower(dim = {tdim}, depth = {tdepth}, heads = {theads}, embed_dim = {tdim},
                               vocab = {vocab}, text_len = {text_len}, eos_id = {eos})  text -> text_emb
}}
loss contrastive: ClipLoss()   image_emb, text_emb, logit_scale -> loss
"""

_I, _T = r"models\.image_encoder\.", r"models\.text_encoder\."
_BLOCKS = [
    (r"trunk\.blocks\.(\d+)\.norm_1\.weight", r"trunk.blocks.layers.\1.norm1.weight"),
    (r"trunk\.blocks\.(\d+)\.norm_2\.weight", r"trunk.blocks.layers.\1.norm2.weight"),
    (r"trunk\.blocks\.(\d+)\.attn\.([qkv])_proj\.weight", r"trunk.blocks.layers.\1.attn.\2.weight"),
    (r"trunk\.blocks\.(\d+)\.attn\.proj\.weight", r"trunk.blocks.layers.\1.attn.proj.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc1\.weight", r"trunk.blocks.layers.\1.mlp.w1.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc3\.weight", r"trunk.blocks.layers.\1.mlp.w3.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc2\.weight", r"trunk.blocks.layers.\1.mlp.w2.weight"),
    (r"trunk\.post_trunk_norm\.weight", r"trunk.blocks.norm.weight"),
]
RULES = [
    (_I + r"preprocessor\.blocks\.0\.patchifier\.proj\.(weight|bias)", r"image.preprocessor.patches.\1"),
    (_I + r"preprocessor\.blocks\.0\.patchifier\.norm\.weight", r"image.preprocessor.patches.norm.weight"),
    (_I + r"preprocessor\.blocks\.0\.cls_token", "image.preprocessor.cls.cls"),
    (_I + r"preprocessor\.blocks\.0\.pos_embed", "image.preprocessor.pos.pos"),
    *[(_I + a, "image." + b) for a, b in _BLOCKS],
    (_I + r"head\.linear\.weight", "image.head.proj.proj.weight"),
    (_I + r"head\.log_logit_scale", "image.head.proj.logit_scale"),
    (_I + r"head\.max_log_logit_scale", None),  # a buffer holding log(100): ClipProjection.logit_scale_max
    (_T + r"preprocessor\.text_embedding\.weight", "text.preprocessor.embed.emb.weight"),
    (_T + r"preprocessor\.positional_embedding", "text.preprocessor.pos.pos"),
    *[(_T + a, "text." + b) for a, b in _BLOCKS],
    (_T + r"head\.linear\.weight", "text.head.proj.proj.weight"),
    (_T + r"head\.max_log_logit_scale", None),  # the text head registers the bound but has no scale
]


def text_positions(state: dict) -> dict:
    """The original's text positions are `[N, D]`; l3m's PosEmbed holds `[1, N, D]`."""
    key = "clip.text.preprocessor.pos.pos"
    return {**state, key: state[key][None]}


def build(tmp_path, c: dict, eos: int):
    source = SOURCE.format(vdim=c["vision_embed_dim"], vdepth=c["vision_num_blocks"], vheads=c["vision_num_heads"],
                           tdim=c["text_embed_dim"], tdepth=c["text_num_blocks"], theads=c["text_num_heads"],
                           patch=c["patch_size"], image=c["img_size"], vocab=c["text_vocab_size"],
                           text_len=c["context_length"], eos=eos)
    model = twin(tmp_path, source)
    criterion = build_criterion(l3m.load(str(tmp_path / "twin.l3m")).program, device="cpu", metrics=False).eval()
    return model, criterion


def run(model, criterion, inputs: dict) -> tuple[dict, torch.Tensor]:
    """Outputs, loss, and the two trunks' final-normed tokens (captured by hooks)."""
    trunks = {}
    hooks = [getattr(model.clip, tower).trunk.blocks.register_forward_hook(
        lambda _m, _a, out, tower=tower: trunks.__setitem__(tower, out[0])) for tower in ("image", "text")]
    try:
        with torch.no_grad():
            out = model(dict(inputs))
            loss, _ = criterion(out)
    finally:
        for h in hooks:
            h.remove()
    return {**out, "image_tokens": trunks["image"], "text_tokens": trunks["text"]}, loss


@pytest.fixture(scope="module")
def fx() -> Fixture:
    return Fixture.load("clip")


@pytest.fixture()
def loaded(tmp_path, fx):
    model, criterion = build(tmp_path, fx.meta["constants"], fx.meta["eos_token_id"])
    load_exact(model, rename(fx.weights, RULES, root="clip"), text_positions)
    return model, criterion


def test_outputs_and_loss_match_the_original(loaded, fx):
    model, criterion = loaded
    out, loss = run(model, criterion, fx.inputs)
    want = fx.outputs
    diffs = {
        "image_tokens": max_abs_diff(out["image_tokens"], want["image_tokens"]),
        "text_tokens": max_abs_diff(out["text_tokens"], want["text_tokens"]),
        # The original's image head returns the embedding already multiplied by the logit scale.
        "image_embed": max_abs_diff(out["image_emb"] * out["logit_scale"], want["image_embed"]),
        "text_embed": max_abs_diff(out["text_emb"], want["text_embed"]),
        "logit_scale": max_abs_diff(out["logit_scale"], want["logit_scale"]),
        "loss": max_abs_diff(loss, want["loss"]),
    }
    print(f"clip parity max|diff|: {diffs}")
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
    assert want["loss"] > 0.1 and want["image_tokens"].abs().max() > 1.0  # non-trivial values


def test_eos_pooling_reads_the_original_position(loaded, fx):
    """Each caption's embedding is the text trunk's token at the original's position (first EOS, 0 if none),
    and those positions differ from the last EOS / last token on the captions built for it."""
    model, criterion = loaded
    out, _ = run(model, criterion, fx.inputs)
    text, eos = fx.inputs["text"], fx.meta["eos_token_id"]
    first = [int((row == eos).int().argmax()) for row in text]
    assert first == fx.meta["eos_positions"]
    last = [max((i for i, t in enumerate(row.tolist()) if t == eos), default=text.shape[1] - 1) for row in text]
    assert first != last  # the fixture's captions tell first from last
    pooled = out["text_tokens"][torch.arange(text.shape[0]), torch.tensor(first)]
    proj = model.clip.text.head.proj.proj
    assert max_abs_diff(torch.nn.functional.normalize(proj(pooled), dim=-1), out["text_emb"]) <= TOLERANCE


def test_logit_scale_is_clamped_as_the_original(loaded, fx):
    model, criterion = loaded
    head = model.clip.image.head.proj
    assert head.logit_scale_max == pytest.approx(fx.weights["models.image_encoder.head.max_log_logit_scale"].item())
    with torch.no_grad():
        head.logit_scale.fill_(5.0)  # above log(100): the original clamps it before use
    out, loss = run(model, criterion, fx.inputs)
    assert max_abs_diff(out["logit_scale"], fx.outputs["clamped.logit_scale"]) <= TOLERANCE
    # A loss of ~27 from logits scaled by 100: rounding of the embeddings (~1e-7) grows 100-fold, so the
    # bound is relative to its size (an unclamped scale of e^5 would move it by half).
    expected = fx.outputs["clamped.loss"]
    assert max_abs_diff(loss, expected) <= TOLERANCE * max(1.0, abs(expected.item()))
    # The original clamps the stored value in place, so at the bound its gradient is exp(bound), not zero.
    head.train()
    _, s = head(torch.randn(2, head.proj.in_features))
    s.backward()
    assert head.logit_scale.grad.item() == pytest.approx(100.0, rel=1e-5)


def test_full_size_parameter_count_is_the_original(fx):
    from helpers import ROOT

    from l3m.plan import plan

    compiled = l3m.load(str(ROOT / "models" / "clip.l3m"))
    assert plan(compiled.program)["params"]["total"] == fx.meta["full_size_param_count"] == 433_534_465


GROUPS = {
    "patch weight": (r".*patchifier\.proj\.weight", r".*patches\.weight"),
    "patch bias": (r".*patchifier\.proj\.bias", r".*patches\.bias"),
    "patch norm": (r".*patchifier\.norm\.weight", r".*patches\.norm\.weight"),
    "cls token": (r".*cls_token", r".*cls\.cls"),
    "image positions": (_I + r"preprocessor\.blocks\.0\.pos_embed", r"image\.preprocessor\.pos\.pos"),
    "text positions": (_T + r"preprocessor\.positional_embedding", r"text\.preprocessor\.pos\.pos"),
    "token embedding": (r".*text_embedding\.weight", r".*embed\.emb\.weight"),
    "q/k/v weights": (r".*attn\.[qkv]_proj\.weight", r".*attn\.[qkv]\.weight"),
    "attn proj weights": (r".*attn\.proj\.weight", r".*attn\.proj\.weight"),
    "mlp fc1/fc3": (r".*mlp\.fc[13]\.weight", r".*mlp\.w[13]\.weight"),
    "mlp fc2": (r".*mlp\.fc2\.weight", r".*mlp\.w2\.weight"),
    "trunk norms": (r".*trunk\..*norm.*\.weight", r".*trunk\..*norm.*\.weight"),
    "image head": (_I + r"head\.linear\.weight", r"image\.head\.proj\.proj\.weight"),
    "text head": (_T + r"head\.linear\.weight", r"text\.head\.proj\.proj\.weight"),
    "logit scale": (r".*head\.log_logit_scale", r".*head\.proj\.logit_scale"),
}


def test_initialisation_matches_the_original(tmp_path, fx):
    c = fx.meta["init_statistics_constants"]
    torch.manual_seed(c["seed"])
    model, _ = build(tmp_path, c, c["eos_token_id"])
    stats = {k: v for k, v in fx.meta["init_statistics"].items() if not k.endswith("max_log_logit_scale")}
    for bound in ("models.image_encoder.head.max_log_logit_scale", "models.text_encoder.head.max_log_logit_scale"):
        assert fx.meta["init_statistics"][bound]["mean"] == pytest.approx(math.log(100.0))
    compared = compare_groups(stats, model.state_dict(), GROUPS, root="clip")
    assert len(compared) == len(GROUPS)
    assert compared["logit scale"][1]["mean"] == pytest.approx(math.log(1 / 0.07))

"""models/aimv2_moe.l3m computes what the original AIMv2-MoE (ml-l3m configs/aimv2/002_aimv2_moe_hfdata.yaml)
computes: the original's weights at a tiny size give the same routing, encoder features, text logits, pixel
predictions and losses (incl. the load-balancing term, averaged over the MoE layers), and the full-size
parameter count and init statistics are the original's. Fixture: tools/parity/aimv2_moe.py, which runs
ml-l3m with a dense stand-in for megablocks' dMoE (see its meta.json: `original_code`, `stand_in`)."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT
from parity_fixtures import TOLERANCE, Fixture, load_exact, max_abs_diff, rename
from parity_init_stats import compare_groups

import l3m
from l3m.model.build import materialize
from l3m.model.criterion import build_criterion
from l3m.plan import block_notes

MODELS = ROOT / "models"

TWIN = """l3m 1
import "@MODELS@/aimv2.l3m" as aimv2
import "@MODELS@/aimv2_moe.l3m" as moe

data {{
  train:  Synthetic(kind = image_text, image_size = {img_size}, vocab = {text_vocab_size}, seq_len = {context_length},
                    batch_size = 3) -> image, text
  prefix: RandomPrefixLength(low = 1, high = {num_patches} - 1)    image -> prefix_len
}}

model aimv2_moe {{
  model encoder = moe.MoEEncoder(dim = {vision_embed_dim}, depth = {vision_num_blocks}, heads = {vision_num_heads},
                                 {hidden}patch = {patch_size}, image_size = {img_size})
                  image, prefix_len -> features, moe_aux
  model decoder = aimv2.Decoder(enc_dim = {vision_embed_dim}, dim = {text_embed_dim}, depth = {text_num_blocks},
                                heads = {text_num_heads}, vocab = {text_vocab_size}, text_len = {context_length},
                                patch = {patch_size}, image_size = {img_size}, fused_qkv = true)
                  features, text -> text_logits, pixels
}}

# The loss lines of models/aimv2_moe.l3m.
{losses}
"""

ENC, DEC = r"models\.image_encoder\.", r"models\.text_decoder\."
# The original's names -> l3m's (first match wins); q/k/v and expert layouts are converted by `_layouts`.
RULES = [
    (ENC + r"preprocessor\.blocks\.0\.patchifier\.proj\.(weight|bias)", r"encoder.preprocessor.patches.\1"),
    (ENC + r"preprocessor\.blocks\.0\.patchifier\.norm\.weight", "encoder.preprocessor.patches.norm.weight"),
    (ENC + r"preprocessor\.blocks\.0\.pos_embed", "encoder.preprocessor.pos.pos"),
    (ENC + r"trunk\.blocks\.(\d+)\.mlp\.moe\.router\.layer\.weight", r"encoder.trunk.blocks.layers.\1.mlp.router.weight"),
    (ENC + r"trunk\.blocks\.(\d+)\.mlp\.moe\.experts\.mlp\.w1", r"encoder.trunk.blocks.layers.\1.mlp.w1"),
    (ENC + r"trunk\.blocks\.(\d+)\.mlp\.moe\.experts\.mlp\.v1", r"encoder.trunk.blocks.layers.\1.mlp.w3"),
    (ENC + r"trunk\.blocks\.(\d+)\.mlp\.moe\.experts\.mlp\.w2", r"encoder.trunk.blocks.layers.\1.mlp.w2"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.blocks\.(\d+)\.attn\.(qkv|proj)\.weight",
     r"\1.trunk.blocks.layers.\2.attn.\3.weight"),
    (DEC + r"trunk\.blocks\.(\d+)\.mlp\.fc(\d)\.weight", r"decoder.trunk.blocks.layers.\1.mlp.w\2.weight"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.blocks\.(\d+)\.norm_(\d)\.weight",
     r"\1.trunk.blocks.layers.\2.norm\3.weight"),
    (r"models\.(image_encoder|text_decoder)\.trunk\.post_trunk_norm\.weight", r"\1.trunk.blocks.norm.weight"),
    (DEC + r"preprocessor\.vision_preprocessor\.module\.(weight|bias)", r"decoder.preprocessor.proj.\1"),
    (DEC + r"preprocessor\.text_preprocessor\.text_embedding\.weight", "decoder.preprocessor.embed.emb.weight"),
    (DEC + r"preprocessor\.text_preprocessor\.cls_token", "decoder.preprocessor.cls.cls"),
    (DEC + r"preprocessor\.text_preprocessor\.positional_embedding", "decoder.preprocessor.pos.pos"),
    (DEC + r"head\.blocks\.0\.linear\.weight", "decoder.head.lm.proj.weight"),
    (DEC + r"head\.blocks\.1\.linear\.weight", "decoder.head.pix.weight"),
]


def _layouts(state: dict, enc_heads: int, dec_heads: int, experts: int) -> dict:
    """The original's layouts -> l3m's: fused qkv rows [q heads | k heads | v heads] -> per head [q, k, v];
    megablocks' experts `[E * ffn, dim]` (w2 applied untransposed) -> `[E, out, in]`."""
    out = {}
    for k, v in state.items():
        k = k.replace("image_encoder.", "encoder.").replace("text_decoder.", "decoder.")
        if k.endswith("attn.qkv.weight"):
            heads = enc_heads if k.startswith("encoder.") else dec_heads
            v = v.view(3, heads, -1, v.shape[-1]).transpose(0, 1).reshape(v.shape)
        elif k.endswith(("mlp.w1", "mlp.w3")):
            v = v.view(experts, -1, v.shape[-1])
        elif k.endswith("mlp.w2") and k.startswith("encoder."):
            v = v.view(experts, -1, v.shape[-1]).transpose(1, 2)
        elif k.endswith("decoder.preprocessor.pos.pos"):
            v = v[None]  # the original's text table is [1 + ctx, D]; l3m's PosEmbed keeps [1, n, D]
        out[k] = v
    return out


def build_twin(tmp_path, source: str):
    """The twin (initialised on the CPU, eval mode) and its program's criterion, from one compile."""
    path = tmp_path / "twin.l3m"
    path.write_text(source.replace("@MODELS@", str(MODELS)))
    compiled = l3m.load(str(path))
    model = materialize(compiled.build_model(), "cpu").eval()
    return model, build_criterion(compiled.program, device="cpu", metrics=False).eval()


def run(model, criterion, inputs: dict) -> tuple[dict, torch.Tensor, dict]:
    with torch.no_grad():
        out = model(dict(inputs))
        total, logs = criterion(out)
    return out, total, logs


def _losses() -> str:
    lines = [ln for ln in (MODELS / "aimv2_moe.l3m").read_text().splitlines() if ln.startswith("loss ")]
    assert len(lines) == 3, lines
    return "\n".join(lines).replace("patch = patch", "patch = {patch_size}")


def _source(constants: dict, hidden: int | None = None) -> str:
    extra = f"hidden = {hidden}, " if hidden is not None else ""
    return TWIN.format(**constants, hidden=extra, losses=_losses().format(**constants))


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture.load("aimv2_moe")


def _router_scores(model) -> tuple[dict, list]:
    """Each encoder MoE layer's router softmax, recorded by forward hooks on the router projections."""
    got: dict = {}
    hooks = []
    for i, layer in enumerate(model.aimv2_moe.encoder.trunk.blocks.layers):
        def hook(_m, _inp, logits, i=i):
            got[i] = logits.float().softmax(dim=-1)
        hooks.append(layer.mlp.router.register_forward_hook(hook))
    return got, hooks


def test_aimv2_moe_matches_the_original(tmp_path, fixture):
    c = fixture.meta["constants"]
    model, criterion = build_twin(tmp_path, _source(c, fixture.meta["expert_hidden"]))
    state = _layouts(rename(fixture.weights, RULES), c["vision_num_heads"], c["text_num_heads"],
                     fixture.meta["num_experts"])
    load_exact(model, {f"aimv2_moe.{k}": v for k, v in state.items()})  # names start with the model's
    scores, hooks = _router_scores(model)
    inputs = {k: fixture.inputs[k] for k in ("image", "text", "prefix_len")}
    out, total, logs = run(model, criterion, inputs)
    for h in hooks:
        h.remove()
    want = fixture.outputs
    diffs = {
        "features": max_abs_diff(out["features"], want["features"]),
        "text_logits": max_abs_diff(out["text_logits"], want["text_logits"][:, :-1]),
        "pixels": max_abs_diff(out["pixels"], want["pixels"]),
        "loss_pixel": max_abs_diff(logs["pixel"], want["loss_pixel"]),
        "loss_text": max_abs_diff(logs["text"], want["loss_text"]),
        "loss_balance": max_abs_diff(logs["balance"], want["loss_balance"]),
        "loss": max_abs_diff(total, want["loss"]),
    }
    for i, s in scores.items():
        diffs[f"router_scores_{i}"] = max_abs_diff(s, want[f"router_scores_{i}"])
        assert torch.equal(s.argmax(dim=-1), want[f"router_choice_{i}"]), f"layer {i} routes differently"
        assert want[f"router_choice_{i}"].unique().numel() > 1  # the fixture exercises several experts
    print("aimv2_moe max |diff|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert len(scores) == c["vision_num_blocks"]
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert logs["balance"].item() > 0.005  # 0.01 x a mean of per-layer terms near 1, not their sum


def test_aimv2_moe_full_size_parameter_count_and_plan_note(fixture):
    model = l3m.load(str(MODELS / "aimv2_moe.l3m")).build_model()  # on the meta device
    assert sum(p.numel() for p in model.parameters()) == fixture.meta["full_size_param_count"] == 476_682_496
    notes = block_notes(model)
    assert len(notes) == 1 and "GELU" in notes[0] and "and 11 more" in notes[0], notes


GROUPS = {
    "patch weight": (ENC + r".*patchifier\.proj\.weight", r"encoder\.preprocessor\.patches\.weight"),
    "patch bias": (ENC + r".*patchifier\.proj\.bias", r"encoder\.preprocessor\.patches\.bias"),
    "norm gains": (r".*norm.*\.weight", r".*norm.*\.weight"),
    "patch positions": (ENC + r".*pos_embed", r"encoder\.preprocessor\.pos\.pos"),
    "encoder qkv": (ENC + r".*attn\.qkv\.weight", r"encoder\..*attn\.qkv\.weight"),
    "encoder attn proj": (ENC + r".*attn\.proj\.weight", r"encoder\..*attn\.proj\.weight"),
    "routers": (r".*router\.layer\.weight", r".*mlp\.router\.weight"),
    "experts w1, v1": (r".*experts\.mlp\.(w1|v1)", r"encoder\..*mlp\.(w1|w3)"),
    "experts w2": (r".*experts\.mlp\.w2", r"encoder\..*mlp\.w2"),
    "decoder qkv": (DEC + r".*attn\.qkv\.weight", r"decoder\..*attn\.qkv\.weight"),
    "decoder attn proj": (DEC + r".*attn\.proj\.weight", r"decoder\..*attn\.proj\.weight"),
    "decoder mlp": (DEC + r".*mlp\.fc\d\.weight", r"decoder\..*mlp\.w\d\.weight"),
    "decoder input projection": (DEC + r".*vision_preprocessor\.module\.weight", r"decoder\.preprocessor\.proj\.weight"),
    "decoder input bias": (DEC + r".*vision_preprocessor\.module\.bias", r"decoder\.preprocessor\.proj\.bias"),
    "token embedding": (DEC + r".*text_embedding\.weight", r"decoder\.preprocessor\.embed\.emb\.weight"),
    "cls token": (DEC + r".*cls_token", r"decoder\.preprocessor\.cls\.cls"),
    "text positions": (DEC + r".*positional_embedding", r"decoder\.preprocessor\.pos\.pos"),
    "lm head": (DEC + r"head\.blocks\.0\.linear\.weight", r"decoder\.head\.lm\.proj\.weight"),
    "pixel head": (DEC + r"head\.blocks\.1\.linear\.weight", r"decoder\.head\.pix\.weight"),
}


def test_aimv2_moe_init_statistics(tmp_path, fixture):
    c = fixture.meta["init_statistics_constants"]
    torch.manual_seed(c["seed"])
    model, _ = build_twin(tmp_path, _source(c))  # the def's own expert hidden size (the YAML's rounding)
    assert model.aimv2_moe.encoder.trunk.blocks.layers[0].mlp.hidden == c["expert_hidden"]
    compared = compare_groups(fixture.meta["init_statistics"], model.state_dict(), GROUPS, root="aimv2_moe")
    assert compared["experts w1, v1"][0]["std"] == pytest.approx(0.02, rel=0.02)  # N(0, 0.02), as megablocks'


TOP2 = """l3m 1
import "@MODELS@/aimv2_moe.l3m" as moe

data {{
  train:  Synthetic(kind = image, image_size = {img_size}, batch_size = 3) -> image, label
  prefix: RandomPrefixLength(low = 1, high = {num_patches} - 1)    image -> prefix_len
}}

model encoder = moe.MoEEncoder(dim = {vision_embed_dim}, depth = {vision_num_blocks}, heads = {vision_num_heads},
                               hidden = {hidden}, top_k = 2, patch = {patch_size}, image_size = {img_size})
                image, prefix_len -> features, moe_aux

{balance}
"""


def test_aimv2_moe_top2_matches_the_original(tmp_path, fixture):
    """The YAML's commented alternative, top_k = 2: raw (unnormalised) probabilities weight the two experts."""
    c = fixture.meta["constants"]
    balance = next(ln for ln in _losses().splitlines() if ln.startswith("loss balance"))
    model, criterion = build_twin(tmp_path, TOP2.format(**c, hidden=fixture.meta["expert_hidden"], balance=balance))
    state = _layouts(rename(fixture.weights, RULES), c["vision_num_heads"], c["text_num_heads"],
                     fixture.meta["num_experts"])
    load_exact(model, {k: v for k, v in state.items() if k.startswith("encoder.")})  # the model is `encoder`
    out, total, logs = run(model, criterion, {k: fixture.inputs[k] for k in ("image", "prefix_len")})
    diffs = {"features": max_abs_diff(out["features"], fixture.outputs["top2_features"]),
             "loss_balance": max_abs_diff(logs["balance"], fixture.outputs["top2_loss_balance"])}
    print("aimv2_moe top-2 max |diff|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert max_abs_diff(fixture.outputs["top2_features"], fixture.outputs["features"]) > 1e-2  # k matters

"""The shipped decoder-only LLM (models/llm.l3m) is the original ml-l3m LLM (configs/text/001_llm_hfdata.yaml):
same position table, logits and loss for the same weights, same full-size parameter count, same
initialisation (fixture: tools/parity/llm.py).

The original's model reads the whole `text` and drops its last token; its loss scores position i against
`text[i + 1]`. l3m's data gives that pair directly: `tokens = text[:, :-1]`, `targets = text[:, 1:]`.
"""

from __future__ import annotations

import pytest
import torch
from parity_fixtures import TOLERANCE, Fixture, load_exact, max_abs_diff, rename, twin
from parity_init_stats import compare_groups

import l3m
from l3m.model.criterion import build_criterion

SOURCE = """l3m 1
import "@MODELS@/llm.l3m" as llm
data {{ train: Synthetic(kind = tokens, vocab = {vocab}, seq_len = {seq}, batch_size = 2) -> tokens, targets }}
model llm = llm.GPT(vocab = {vocab}, context = {context}, dim = {dim}, depth = {depth}, heads = {heads})
            tokens -> logits
loss ce: LMCrossEntropy({loss_args}) logits, targets -> loss
"""

RULES = [
    (r"preprocessor\.embedding\.weight", "preprocessor.embed.emb.weight"),
    (r"preprocessor\.pos_embed", None),  # frozen: l3m's table is a buffer, compared on its own below
    (r"trunk\.blocks\.(\d+)\.norm_1\.(weight|bias)", r"trunk.blocks.layers.\1.norm1.\2"),
    (r"trunk\.blocks\.(\d+)\.norm_2\.(weight|bias)", r"trunk.blocks.layers.\1.norm2.\2"),
    (r"trunk\.blocks\.(\d+)\.attn\.(qkv|proj)\.weight", r"trunk.blocks.layers.\1.attn.\2.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc1\.weight", r"trunk.blocks.layers.\1.mlp.w1.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc3\.weight", r"trunk.blocks.layers.\1.mlp.w3.weight"),
    (r"trunk\.blocks\.(\d+)\.mlp\.fc2\.weight", r"trunk.blocks.layers.\1.mlp.w2.weight"),
    (r"trunk\.post_trunk_norm\.(weight|bias)", r"trunk.blocks.norm.\1"),
    (r"head\.linear\.weight", "head.lm.proj.weight"),
]


def regroup_qkv(heads: int):
    """The original's fused projection is `[q; k; v]` (each all heads); l3m's keeps each head's q, k, v
    rows together (`[h: q, k, v]`), so that tensor parallelism can split it by heads."""

    def transform(state: dict) -> dict:
        out = dict(state)
        for k, w in state.items():
            if k.endswith(".attn.qkv.weight"):
                out[k] = w.reshape(3, heads, -1, w.shape[-1]).transpose(0, 1).reshape(w.shape)
        return out

    return transform


def build(tmp_path, c: dict, model: dict, loss_args: str = ""):
    source = SOURCE.format(vocab=c["vocab_size"], seq=c["context_length"] - 1, context=c["context_length"],
                           dim=c["embed_dim"], depth=model["num_blocks"], heads=model["num_heads"],
                           loss_args=loss_args)
    net = twin(tmp_path, source)
    criterion = build_criterion(l3m.load(str(tmp_path / "twin.l3m")).program, device="cpu", metrics=False).eval()
    return net, criterion


@pytest.fixture(scope="module")
def fx() -> Fixture:
    return Fixture.load("llm")


def loaded(tmp_path, fx, loss_args: str = ""):
    net, criterion = build(tmp_path, fx.meta["constants"], fx.meta["model_overrides"], loss_args)
    load_exact(net, rename(fx.weights, RULES, root="llm"), regroup_qkv(fx.meta["model_overrides"]["num_heads"]))
    return net, criterion


def forward(net, criterion, text: torch.Tensor) -> tuple[dict, torch.Tensor]:
    with torch.no_grad():
        out = net({"tokens": text[:, :-1], "targets": text[:, 1:]})
        loss, _ = criterion(out)
    return out, loss


def test_position_table_is_the_original(tmp_path, fx):
    net, _ = loaded(tmp_path, fx)
    mine = net.llm.preprocessor.pos.pos
    assert max_abs_diff(mine, fx.weights["preprocessor.pos_embed"]) <= 1e-6
    # Its first quarter encodes the constant column 0 (sin 0), the second quarter cos 0.
    d = mine.shape[-1]
    assert mine[..., : d // 4].abs().max() == 0 and (mine[..., d // 4 : d // 2] == 1).all()


def test_logits_and_loss_match_the_original(tmp_path, fx):
    net, criterion = loaded(tmp_path, fx)
    out, loss = forward(net, criterion, fx.inputs["text"])
    diffs = {"logits": max_abs_diff(out["logits"], fx.outputs["logits"]), "loss": max_abs_diff(loss, fx.outputs["loss"])}
    print(f"llm parity max|diff|: {diffs}")
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
    assert fx.outputs["logits"].abs().max() > 1.0 and fx.outputs["loss"] > 1.0  # non-trivial values


def test_z_loss_matches_the_original_formula(tmp_path, fx):
    net, criterion = loaded(tmp_path, fx, "z_loss = 1e-4")
    _, loss = forward(net, criterion, fx.inputs["text"])
    diff = max_abs_diff(loss, fx.outputs["z_loss_1e-4.loss"])
    assert diff <= TOLERANCE, diff
    assert fx.outputs["z_loss_1e-4.loss"] - fx.outputs["loss"] > 1e-4  # the term is visible at this size


def test_full_size_parameter_count_is_the_original(fx):
    from helpers import ROOT

    from l3m.plan import plan

    compiled = l3m.load(str(ROOT / "models" / "llm.l3m"))
    # The original's count of trainable parameters; its frozen sin-cos table (an nn.Parameter with
    # requires_grad=False there, a buffer here) is the rest of its nn.Parameter total.
    assert plan(compiled.program)["params"]["total"] == fx.meta["full_size_trainable_param_count"] == 1_439_895_552
    context, dim = 2048, 2048
    assert fx.meta["full_size_frozen_param_count"] == context * dim


GROUPS = {
    "token embedding": (r"preprocessor\.embedding\.weight", r".*embed\.emb\.weight"),
    "qkv weights": (r".*attn\.qkv\.weight", r".*attn\.qkv\.weight"),
    "attn proj weights": (r".*attn\.proj\.weight", r".*attn\.proj\.weight"),
    "mlp fc1/fc3": (r".*mlp\.fc[13]\.weight", r".*mlp\.w[13]\.weight"),
    "mlp fc2": (r".*mlp\.fc2\.weight", r".*mlp\.w2\.weight"),
    "norm gains": (r".*norm.*\.weight", r".*norm.*\.weight"),
    "norm biases": (r".*norm.*\.bias", r".*norm.*\.bias"),
    "head": (r"head\.linear\.weight", r".*head\.lm\.proj\.weight"),
}


def test_initialisation_matches_the_original(tmp_path, fx):
    c = fx.meta["init_statistics_constants"]
    torch.manual_seed(c["seed"])
    net, _ = build(tmp_path, c, c)
    stats = {k: v for k, v in fx.meta["init_statistics"].items() if k != "preprocessor.pos_embed"}
    compared = compare_groups(stats, net.state_dict(), GROUPS, root="llm")
    assert len(compared) == len(GROUPS)
    # Depth-scaled: every trunk and head weight has variance 1 / ((1 + depth) * fan_in).
    depth, dim = c["num_blocks"], c["embed_dim"]
    assert compared["qkv weights"][1]["std"] == pytest.approx((1 / ((1 + depth) * dim)) ** 0.5, rel=0.02)

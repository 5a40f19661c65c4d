"""Program -> MetaModel and Criterion: meta build, ties, freezing, materialising, the objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l3m.dsl.ir import Section
from l3m.model.build import build_model, freeze, materialize
from l3m.model.criterion import Criterion, build_criterion


def batch(n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randint(11, (2, n), generator=g),
        "targets": torch.randint(11, (2, n), generator=g),
    }


def test_builds_on_meta_with_file_names(gpt):
    model = build_model(gpt)
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "gpt.preprocessor.embed.emb.weight",
        "gpt.trunk.mix.lin.weight",
        "gpt.trunk.mix.lin.bias",
    ]  # the head's weight is the embedding's, listed once; every name starts with the block's path
    assert all(p.is_meta for p in model.parameters())
    assert model.gpt.trunk.mix.lin.in_features == 8  # positional arguments reached the constructor
    assert model.schedule == ["gpt.preprocessor.embed", "gpt.trunk.mix", "gpt.head.lm"]


def test_materialize_initialises_and_keeps_the_tie(gpt):
    torch.manual_seed(0)
    model = materialize(build_model(gpt), "cpu")
    emb = model.gpt.preprocessor.embed.emb.weight
    assert emb.device.type == "cpu" and torch.isfinite(emb).all()
    assert model.gpt.head.lm.proj.weight is emb
    out = model(batch())
    assert out["logits"].shape == (2, 5, 11)
    expect = F.linear(model.gpt.trunk.mix.lin(F.embedding(batch()["tokens"], emb)), emb)
    torch.testing.assert_close(out["logits"], expect)


def test_nested_models_name_submodels_under_the_root(ir):
    prog = ir.program(
        ir.block("clip.image.trunk.enc", "ToyLinear", ["image"], ["img"], 4, 4),
        ir.block("clip.text.trunk.enc", "ToyLinear", ["text"], ["txt"], 4, 4),
        ir.block("clip.head.sum", "ToySum", ["img", "txt"], ["both"]),
    )
    model = build_model(prog)
    assert {n.rsplit(".", 2)[0] for n, _ in model.named_parameters()} == {"clip.image.trunk.enc", "clip.text.trunk.enc"}
    assert "self.clip.head.sum(img_1, txt_2)" in model.code
    out = materialize(model)({"image": torch.ones(1, 4), "text": torch.ones(1, 4)})
    torch.testing.assert_close(out["both"], out["img"] + out["txt"])


def test_schedule_argument_orders_execution_and_skips_other_nodes(ir):
    prog = ir.program(
        ir.block("m.trunk.b", "ToyLinear", ["y"], ["z"], 4, 4),
        ir.block("m.trunk.a", "ToyLinear", ["x"], ["y"], 4, 4),
        ir.loss("l", "ToyMSE", ["z", "x"]),
    )
    model = build_model(prog, schedule=["m.trunk.a", "m.trunk.b", "loss.l"])
    assert model.schedule == ["m.trunk.a", "m.trunk.b"]
    assert [n for n, _ in model.named_parameters()][0].startswith("m.trunk.b.")  # declaration order
    with pytest.raises(ValueError, match="unknown nodes: m.trunk.c"):
        build_model(prog, schedule=["m.trunk.a", "m.trunk.c"])
    with pytest.raises(ValueError, match="missing"):
        build_model(prog, schedule=["m.trunk.a"])


def test_optional_ports_and_outputs(ir):
    prog = ir.program(
        ir.block("m.trunk.split", "ToySplit", ["x"], {"a": "a", "b": "b"}, dim=4),
        ir.block("m.trunk.lin", "ToyLinear", {"x": "a", "scale": "b"}, ["y"], 4, 4),
    )
    model = materialize(build_model(prog))
    x = torch.randn(3, 4)
    out = model({"x": x})
    assert set(out) == {"x", "a", "b", "y"}
    torch.testing.assert_close(out["y"], model.m.trunk.lin.lin(out["a"]) * (2 * x))


def test_freeze_globs(gpt):
    gpt.sections["train"] = Section("train", None, {"freeze": ["gpt.preprocessor.*"]})
    model = build_model(gpt)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"gpt.preprocessor.embed.emb.weight"}
    with pytest.raises(ValueError, match="'gpt.trunk.nope\\*' matches no parameter"):
        freeze(model, ["gpt.trunk.nope*"])
    with pytest.raises(ValueError, match="'preprocessor.\\*' matches no parameter"):
        freeze(model, ["preprocessor.*"])  # the old spelling, without the model's name


@pytest.mark.parametrize(
    "tie, message",
    [("gpt.head.nothing", "names no block"), ("lm", "cannot tie to itself"),
     ("mix", "ToyLinear has no `.weight`"), ("small", "cannot tie a \\(11, 8\\) weight to small's \\(7, 8\\)")],
)  # fmt: skip
def test_tie_errors(ir, tie, message):
    prog = ir.program(
        ir.block("gpt.preprocessor.embed", "ToyEmbed", ["tokens"], ["x"], vocab=11, dim=8),
        ir.block("gpt.preprocessor.small", "ToyEmbed", ["tokens"], ["s"], vocab=7, dim=8),
        ir.block("gpt.trunk.mix", "ToyLinear", ["x"], ["x"], 8, 8),
        ir.block("gpt.head.lm", "ToyHead", ["x"], ["logits"], dim=8, vocab=11, tie=tie),
    )
    with pytest.raises(ValueError, match=message):
        build_model(prog)


def test_build_errors_point_at_the_node(ir):
    bad_kind = ir.program(ir.block("m.trunk.a", "ToyLinear", ["x"], ["y"], 4, 4))
    bad_kind.blocks[0].call.type_name = "ToyMSE"
    with pytest.raises(ValueError, match="test.l3m:1:1: m.trunk.a: 'ToyMSE' is a loss, not a block"):
        build_model(bad_kind)
    unbound = ir.program(ir.block("m.trunk.a", "ToyLinear", ["x"], ["y"], 4, 4))
    unbound.blocks[0].reads[0].port = None
    with pytest.raises(ValueError, match="not bound to a port"):
        build_model(unbound)
    bad_arg = ir.program(ir.block("m.trunk.a", "ToyLinear", ["x"], ["y"], 4, 4, nope=1))
    with pytest.raises(ValueError, match="m.trunk.a: ToyLinear: .*nope"):
        build_model(bad_arg)


# -- the criterion -----------------------------------------------------------------------------


def test_criterion_weights_terms_and_logs_detached_values(ir):
    prog = ir.program(
        ir.block("m.head.lin", "ToyLinear", ["x"], ["pred"], 4, 3),
        ir.loss("mse", "ToyMSE", ["pred", "target"], ["l1"], weight=0.5),
        ir.loss("ce", "ToyCE", ["pred", "label"], ["l2"], weight=2.0),
        ir.metric("avg", "ToyMean", ["pred"]),
    )
    model, crit = materialize(build_model(prog)), build_criterion(prog)
    d = model({"x": torch.randn(6, 4), "target": torch.randn(6, 3), "label": torch.randint(3, (6,))})
    total, logs = crit(d)
    mse = F.mse_loss(d["pred"], d["target"])
    ce = F.cross_entropy(d["pred"], d["label"])
    torch.testing.assert_close(total, 0.5 * mse + 2.0 * ce)
    assert set(logs) == {"mse", "ce", "ce/accuracy", "avg"}
    torch.testing.assert_close(logs["mse"], mse.detach())
    torch.testing.assert_close(logs["avg"], d["pred"].mean().detach())
    assert not any(v.requires_grad for v in logs.values())
    total.backward()
    assert model.m.head.lin.lin.weight.grad is not None


def test_criterion_parameters_and_path_names_when_names_clash(ir):
    prog = ir.program(
        ir.loss("x", "ToyTempLoss", ["a"]),
        ir.metric("x", "ToyMean", ["a"]),
    )
    crit = build_criterion(prog, device="meta")
    assert [n for n, _ in crit.named_parameters()] == ["loss_x.scale"]
    materialize(crit)
    total, logs = crit({"a": torch.full((4,), 3.0)})
    assert total.item() == 9.0 and set(logs) == {"loss_x", "metric_x"}
    assert set(build_criterion(prog, metrics=False).metrics) == set()
    with pytest.raises(ValueError, match="at least one loss"):
        Criterion([])


def test_criterion_holds_each_loss_under_its_name(ir):
    prog = ir.program(ir.loss("temp", "ToyTempLoss", ["a"]), ir.metric("avg", "ToyMean", ["a"]))
    crit = build_criterion(prog)
    assert [n for n, _ in crit.named_parameters()] == ["temp.scale"]  # `criterion.temp.scale` in a run
    assert [n for n, _ in crit.named_children()] == ["temp", "avg"]
    assert crit.losses["temp"].block is crit.temp and crit.losses["temp"].read_keys == ("a",)
    assert list(crit.metrics) == ["avg"] and crit.weights == {"temp": 1.0}
    assert "temp: a -> _\n" in repr(crit)  # the keys print with the criterion
    loss = crit.losses["temp"]
    with pytest.raises(ValueError, match="cannot name a loss or metric 'weights': the name is reserved"):
        Criterion([("weights", loss, ["loss"], 1.0)])
    with pytest.raises(ValueError, match="cannot name a loss or metric 'train': the name is reserved"):
        Criterion([("ok", loss, ["loss"], 1.0)], [("train", crit.metrics["avg"], ["mean"])])


# -- the real block library ---------------------------------------------------------------------


def test_real_library_gpt_builds_ties_and_trains_one_step(ir):
    prog = ir.program(
        ir.block("gpt.preprocessor.embed", "TokenEmbedding", ["tokens"], ["x"], vocab=11, dim=16),
        ir.block(
            "gpt.trunk.blocks", "Transformer", ["x"], ["x"], dim=16, depth=2, heads=2, causal=True, rope=True
        ),
        ir.block("gpt.head.lm", "LMHead", ["x"], ["logits"], 16, 11, tie="embed"),
        ir.loss("ce", "LMCrossEntropy", ["logits", "targets"], ["loss"]),
        ir.metric("ppl", "Perplexity", ["logits", "targets"]),
    )
    torch.manual_seed(0)
    model = materialize(build_model(prog))
    crit = build_criterion(prog)
    assert model.gpt.head.lm.proj.weight is model.gpt.preprocessor.embed.weight
    assert any(n.startswith("gpt.trunk.blocks.layers.1.") for n, _ in model.named_parameters())
    assert "x_2, _, _ = self.gpt.trunk.blocks(x_1)" in model.code
    d = batch()
    out = model(d)
    torch.testing.assert_close(out["logits"], model.forward_eager(d)["logits"])
    total, logs = crit(out)
    torch.testing.assert_close(logs["ppl"], total.detach().exp(), rtol=1e-4, atol=1e-4)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


# -- through the front end ------------------------------------------------------------------------

GPT_FILE = """l3m 1
let dim = 16
data {
  train: Synthetic(kind = "tokens", vocab = 11, seq_len = 6, batch_size = 2) -> tokens, targets
}
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 11, dim = dim)  tokens -> x }
  trunk        { blocks: Transformer(dim = dim, depth = 2, heads = 2, causal = true)  x -> x }
  head         { lm: LMHead(dim, 11, tie = "embed")  x -> logits }
}
loss ce: LMCrossEntropy()  logits, targets -> loss
metric ppl: Perplexity()  logits, targets -> ppl
optimizer AdamW(lr = 3e-4)
train { steps = 2, freeze = ["gpt.trunk.blocks.layers.0.*"] }
"""


def test_a_compiled_file_builds_and_steps(tmp_path):
    from l3m.dsl import compile_file

    path = tmp_path / "gpt.l3m"
    path.write_text(GPT_FILE)
    compiled = compile_file(str(path))
    compiled.raise_errors()
    torch.manual_seed(0)
    model = materialize(build_model(compiled.program, schedule=compiled.flow.model_order()))
    crit = build_criterion(compiled.program)
    assert model.schedule == ["gpt.preprocessor.embed", "gpt.trunk.blocks", "gpt.head.lm"]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("gpt.trunk.blocks.layers.0.") for n in frozen)
    total, logs = crit(model(batch(6)))
    assert set(logs) == {"ce", "ppl"} and torch.isfinite(total)
    total.backward()
    assert all((p.grad is None) == (not p.requires_grad) for p in model.parameters())

"""`train.float8` without a GPU: which Linear layers would be converted (on a meta model, without
torchao), the refusals before any training, and the setting's type and lint warnings."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from l3m.config import TrainConfig
from l3m.dist.float8 import float8_recipe, float8_refusal, float8_targets, float8_tp_refusal, keep_init
from l3m.model.build import materialize
from l3m.train.api import train_main

GPT = """l3m 1
data { train: TextBytes(root = "{corpus}", seq_len = 16, batch_size = 4, max_bytes = 0) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 32) tokens -> x
                 proj: Linear(32, 32) x -> x }
  trunk        { blocks: Transformer(dim = 32, depth = 2, heads = 2, causal = true) x -> x
                 odd: Linear(32, 24) x -> y
                 moe: MoE(dim = 32, hidden = 64, num_experts = 16) x -> x, aux }
  head         { lm: LMHead(dim = 32, vocab = 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train { steps = 1, float8 = true, compile = "blocks" }
log { wandb = "disabled", console = "plain" }
"""


def test_only_trunk_linears_with_dims_in_multiples_of_16_are_converted(compile_text):
    c = compile_text(GPT.replace("{corpus}", "."))
    assert not c.errors, c.errors
    model = c.build_model(device="meta")
    targets = float8_targets(model)
    assert targets == [f"gpt.trunk.blocks.layers.{i}.{m}" for i in range(2)
                       for m in ("attn.qkv", "attn.proj", "mlp.w1", "mlp.w2")]
    # left in full precision: the embedding side (proj), the logits (lm.proj), 24 outputs, the MoE router
    kept = ["gpt.preprocessor.proj", "gpt.trunk.odd", "gpt.trunk.moe.router", "gpt.head.lm.proj"]
    assert all(isinstance(model.get_submodule(k), torch.nn.Linear) for k in kept)
    assert model.get_submodule("gpt.trunk.moe.router").out_features == 16


class SwappedLinear(torch.nn.Linear):
    """Stands for torchao's Float8Linear: an `nn.Linear` subclass that knows nothing of l3m's init styles."""


def test_swapped_layers_keep_the_init_of_the_layers_they_replace(compile_text):
    model = compile_text(GPT.replace("{corpus}", ".")).build_model(device="meta")
    originals = {name: model.get_submodule(name) for name in float8_targets(model)}
    for name, old in originals.items():
        parent, _, attr = name.rpartition(".")
        new = SwappedLinear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
        setattr(model.get_submodule(parent), attr, new)
    keep_init(model, originals)
    torch.manual_seed(0)
    materialize(model, "cpu")  # also proves every tensor was initialised
    w = model.get_submodule("gpt.trunk.blocks.layers.0.mlp.w1").weight
    assert isinstance(model.get_submodule("gpt.trunk.blocks.layers.0.mlp.w1"), SwappedLinear)
    assert abs(w.std().item() - 0.02) < 0.003  # trunc_normal(0.02), not nn.Linear's kaiming (~0.1 for 32 inputs)


def test_recipe_of_each_setting():
    assert float8_recipe(False) is None
    assert float8_recipe(True) == "tensorwise"
    assert float8_recipe("rowwise") == "rowwise"
    with pytest.raises(ValueError, match="train.float8"):
        float8_recipe("e4m3")


def test_cpu_is_refused_in_one_line():
    why = float8_refusal(torch.device("cpu"))
    assert why == ("float8 needs a GPU with float8 tensor cores (compute capability >= 8.9); "
                   "this run is on the CPU")


def test_train_refuses_float8_on_the_cpu_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("hello float8 " * 200)
    prog = tmp_path / "f8.l3m"
    prog.write_text(GPT.replace("{corpus}", str(tmp_path / "corpus.txt")))
    assert train_main(str(prog), [], output=str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "float8 needs a GPU with float8 tensor cores (compute capability >= 8.9); this run is on the CPU" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_setting_is_type_checked_and_linted(compile_text):
    assert TrainConfig().float8 is False
    bad = compile_text(GPT.replace("{corpus}", "."), overrides=["train.float8=fp8"])
    (d,) = bad.errors
    assert d.code == "E602" and "train.float8" in d.message
    eager = compile_text(GPT.replace("{corpus}", ".").replace('compile = "blocks"', "compile = false"))
    codes = {d.code for d in eager.diagnostics}
    assert "W606" in codes  # float8 without compile
    assert ("W605" in codes) == (importlib.util.find_spec("torchao") is None)
    assert "W606" not in {d.code for d in compile_text(GPT.replace("{corpus}", ".")).diagnostics}
    (tp,) = compile_text(GPT.replace("{corpus}", "."), overrides=["mesh.tp=2"]).errors
    assert tp.code == "E605" and "mesh.tp = 2" in tp.message and (tp.span.line, tp.span.col) == (13, 29)
    assert float8_tp_refusal(2).startswith("train.float8 with tensor parallelism (mesh.tp = 2) is not supported yet")


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_torchao_converts_exactly_the_targets_on_the_meta_model(compile_text, recipe):
    pytest.importorskip("torchao.float8")
    from l3m.dist.float8 import apply_float8

    model = compile_text(GPT.replace("{corpus}", ".")).build_model(device="meta")
    targets = float8_targets(model)
    assert apply_float8(model, recipe) == targets
    swapped = [n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"]
    assert swapped == targets
    torch.manual_seed(0)
    materialize(model, "cpu")  # every tensor initialised, in l3m's init styles
    assert abs(model.get_submodule(targets[2]).weight.std().item() - 0.0176) < 0.003  # trunc_normal(0.02)

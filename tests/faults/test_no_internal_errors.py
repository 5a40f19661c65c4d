"""A mistake in the program is reported as the user's, naming the node at its `file:line:col`, never as
"internal error, please report it": shapes that do not fit between blocks, a `tie` to nothing, a loss
reading a metric's output, patterns that match nothing, constructors that refuse their arguments."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from bad_input_utils import make_cli, no_internal_error, program, with_opaque
from helpers import ROOT

from l3m.dsl import compile_file
from l3m.model.blame import BlockFailure, blame
from l3m.model.build import build_model, materialize
from l3m.model.criterion import build_criterion

WRONG_WIDTH = ("postprocessor { pool: AvgPool() x -> x }",
               "postprocessor { pool: AvgPool() x -> x\n  proj: Linear(in_features = 32, out_features = 16) x -> x }")
# A block that declares no shapes: lint cannot follow the widths through it, so the mismatch after it
# is found when the step runs (lint finds it without `opaque`: test_lint_finds_the_wrong_width).
OPAQUE = ("postprocessor { pool: AvgPool() x -> x }",
          "postprocessor { pool: AvgPool() x -> x\n  opaque: Opaque() x -> x\n"
          "  proj: Linear(in_features = 32, out_features = 16) x -> x }")


def opaque_program(tmp_path, monkeypatch=None):
    """The program with an undeclared extension block before a Linear of the wrong width."""
    return with_opaque(tmp_path, OPAQUE, monkeypatch=monkeypatch)


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    return make_cli(monkeypatch, tmp_path, capsys)


def test_lint_finds_the_wrong_width(cli, tmp_path):
    code, _, err = cli("lint", program(tmp_path, WRONG_WIDTH))
    assert code == 1
    no_internal_error(err)
    assert "prog.l3m:9:16: error[E750]: 'm.postprocessor.proj' (Linear) expects x: [..., 32], but 'x' is [B, 16]" in err


def test_a_shape_mismatch_names_the_block_through_the_real_cli(tmp_path):
    path = opaque_program(tmp_path)
    env = dict(os.environ, L3M_DEVICE="cpu", WANDB_MODE="disabled", NO_COLOR="1", L3M_PEAK_FLOPS="1e11")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env.pop("L3M_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "l3m", "train", str(path), "--output", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 1
    no_internal_error(r.stderr)
    assert ("prog.l3m:11:3: error[E901]: block 'proj' (Linear) failed: mat1 and mat2 shapes cannot be multiplied "
            "(4x16 and 32x16)") in r.stderr
    assert " 11 |   proj: Linear(in_features = 32" in r.stderr and "|   ^^^^" in r.stderr
    assert "note: its inputs: x float32[4, 16]" in r.stderr


def test_the_traceback_is_there_under_l3m_debug(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("L3M_DEBUG", "1")
    code, _, err = cli("train", opaque_program(tmp_path, monkeypatch), "--output", tmp_path / "run")
    assert code == 1
    assert "Traceback" in err and "error[E901]: block 'proj' (Linear) failed" in err


LM = """l3m 1
data { train: Synthetic(kind = tokens, vocab = 64, seq_len = 8, batch_size = 2, length = 16) -> tokens, targets }
model m {
  preprocessor { embed: TokenEmbedding(vocab = 64, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x
                 mix: Linear(in_features = 16, out_features = 16) x -> x }
  head         { lm: LMHead(dim = 16, vocab = 64, tie = "TIE") x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
"""


def test_an_unknown_tie_target_is_a_lint_error(cli, tmp_path):
    (tmp_path / "lm.l3m").write_text(LM.replace("TIE", "embd"))
    code, _, err = cli("lint", tmp_path / "lm.l3m")
    assert code == 1
    assert "lm.l3m:7:51: error[E208]: block 'lm' ties to 'embd', which names no block" in err
    assert "did you mean 'embed'?" in err
    code, _, err = cli("train", tmp_path / "lm.l3m", "--output", tmp_path / "run")  # compiled first: the same error
    assert code == 1 and "error[E208]" in err
    no_internal_error(err)


@pytest.mark.parametrize("tie, message", [("lm", "ties to itself"), ("mix", "names 2 blocks"),
                                          ("m.trunk.mix", None), ("embed", None)])
def test_ties_to_itself_or_to_an_ambiguous_name(compile_text, tie, message):
    second_mix = "  postprocessor { mix: Linear(in_features = 16, out_features = 16) x -> x }\n  head "
    text = LM.replace("TIE", tie).replace("  head ", second_mix)  # 'mix' in the trunk and the postprocessor
    errors = [d for d in compile_text(text).errors if d.code == "E208"]
    if message is None:
        assert not errors
    else:
        assert len(errors) == 1 and message in errors[0].message, errors


def test_a_loss_reading_a_metrics_output_is_a_lint_error(cli, tmp_path):
    src = program(tmp_path, ("loss   ce:   ClassificationCE()  logits, label -> loss",
                             "loss   ce:   ClassificationCE()  top1, label -> loss"))
    code, _, err = cli("lint", src)
    assert code == 1
    assert "prog.l3m:11:34: error[E106]: loss 'ce' reads key 'top1', which metric 'top1' writes" in err
    assert "note: metric 'top1' writes it here" in err


def test_a_freeze_pattern_matching_nothing(cli, tmp_path):
    src = program(tmp_path, ("train { steps = 2,", 'train { freeze = ["m.trunk.blokcs.*"], steps = 2,'))
    for command in ("lint", "plan", "train"):  # lint knows the parameter names without building the model
        code, _, err = cli(command, src, *(["--output", tmp_path / "run"] if command == "train" else []))
        assert code == 1, command
        no_internal_error(err)
        assert "prog.l3m:14:19: error[E640]: train.freeze: freeze pattern 'm.trunk.blokcs.*' matches no parameter" in err
        assert "such as 'm.preprocessor.patches." in err


def test_an_init_include_pattern_matching_nothing(cli, tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"m.trunk.blocks.norm.weight": torch.ones(16)}, str(weights))
    # A model parameter that the file does not hold: found when the file is read.
    code, _, err = cli("train", program(tmp_path), "--output", tmp_path / "run", f'train.init_from="{weights}"',
                       'train.init_include=["m.head.*"]')
    assert code == 1
    no_internal_error(err)
    assert "error[E640]: train.init_include pattern 'm.head.*' matches no tensor of" in err
    assert "such as 'm.trunk.blocks.norm.weight'" in err
    # No model parameter at all: found by lint, before any file is read.
    code, _, err = cli("train", program(tmp_path), "--output", tmp_path / "run2", f'train.init_from="{weights}"',
                       'train.init_include=["m.trunk.blocks.nrom*"]')
    assert code == 1
    assert "error[E640]: train.init_include pattern 'm.trunk.blocks.nrom*' matches no parameter of the model" in err


def test_a_no_decay_pattern_matching_nothing_is_a_plan_note(cli, tmp_path):
    src = program(tmp_path, ("AdamW(lr = 1e-3)", 'AdamW(lr = 1e-3, no_decay = ["*bais"])'))
    code, out, err = cli("plan", src)
    assert code == 0, err
    # Lint's note (the static parameter names know every block here); plan does not say it twice.
    assert "note[N640]: no_decay pattern '*bais' matches no parameter" in err
    assert "'*bais'" not in out


@pytest.mark.parametrize("edit, message", [
    (("heads = 2", "heads = 2, mlp_ratio = -1.0"), "block 'blocks' (Transformer) could not be built:"),
    (("AdamW(lr = 1e-3)", "AdamW(lr = -1.0)"), "optimizer 'AdamW' could not be built: Invalid learning rate"),
    (("length = 32", "length = -3"), "data source 'train' (Synthetic) could not be built: length"),
])  # fmt: skip
def test_nodes_that_refuse_their_arguments_or_inputs(cli, tmp_path, edit, message):
    code, _, err = cli("train", program(tmp_path, edit), "--output", tmp_path / "run")
    assert code == 1
    no_internal_error(err)
    assert "error[E901]: " + message in err, err


@pytest.mark.parametrize("edit, where", [
    (("heads = 2", "heads = 0"), "prog.l3m:7:60: error[E754]: 'm.trunk.blocks' (Transformer): heads (0) must be at least 1"),
    (("PatchEmbed(dim = 16, patch = 4) image", "PatchEmbed(dim = 16, patch = 4) label"),
     "prog.l3m:6:60: error[E751]: 'm.preprocessor.patches' (PatchEmbed) expects image to hold float values"),
    (("ClassificationCE()  logits, label", "ClassificationCE()  image, label"),
     "prog.l3m:11:34: error[E750]: 'loss.ce' (ClassificationCE) expects logits: [B, C] (2 dims)"),
])  # fmt: skip
def test_what_used_to_fail_at_run_time_is_a_lint_error(cli, tmp_path, edit, where):
    """Declared shapes and constraints (tests/dsl/test_block_rules.py) find these before a tensor exists."""
    code, _, err = cli("train", program(tmp_path, edit), "--output", tmp_path / "run")
    assert code == 1
    no_internal_error(err)
    assert where in err, err


def test_blame_names_the_block_or_loss_that_raised():
    compiled = compile_file(str(ROOT / "examples" / "vit_digits.l3m"))
    program = compiled.program
    model = materialize(build_model(program, schedule=compiled.flow.model_order()))
    criterion = build_criterion(program)
    with pytest.raises(BlockFailure) as e, blame(program, model):
        model({"image": torch.zeros(2, 3, 15, 15)})  # not a multiple of the patch size
    assert e.value.node.name == "patches" and e.value.diagnostic.code == "E901"
    d = model({"image": torch.zeros(2, 3, 16, 16)})
    with pytest.raises(BlockFailure) as e, blame(program, model):
        criterion({**d, "label": torch.zeros(3, dtype=torch.long)})  # 3 labels for 2 samples
    assert e.value.node.name == "ce" and e.value.node.role == "loss"
    with pytest.raises(ZeroDivisionError), blame(program, model):  # not raised by a node: left alone
        _ = 1 // 0

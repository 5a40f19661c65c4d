"""examples/cnn_digits.l3m: a small ResNet from registered blocks only (Conv2d, BatchNorm, Activation, Add,
pooling), lint clean, formatted, and a few training steps lower the loss."""

from __future__ import annotations

import pytest
from helpers import ROOT
from train_utils import metrics

from l3m.dsl import compile_file
from l3m.dsl.fmt import format_text
from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")

PATH = ROOT / "examples" / "cnn_digits.l3m"


def test_cnn_example_is_lint_clean_formatted_and_has_no_extension():
    compiled = compile_file(str(PATH))
    assert compiled.ok and not compiled.diagnostics, [(d.code, d.message) for d in compiled.diagnostics]
    text = PATH.read_text()
    assert "extension" not in text and format_text(text) == text
    types = {n.call.type_name for n in compiled.program.blocks}
    assert {"Conv2d", "BatchNorm", "Add", "GlobalAvgPool"} <= types


def test_cnn_example_trains_and_the_loss_falls(tmp_path):
    run = tmp_path / "cnn"
    overrides = ["train.steps=40", "data.train.batch_size=32", "optimizer.lr=1e-2", "train.log_every=5",
                 "train.eval_every=0", "train.checkpoint_every=0", "log.wandb=disabled"]
    assert train_main(str(PATH), overrides, output=str(run)) == 0
    losses = [r["loss"] for r in metrics(run)]
    assert len(losses) == 8
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first - 0.3, losses

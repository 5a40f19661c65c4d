"""examples/mae_digits.l3m and examples/perceiver_digits.l3m: registered blocks only, lint clean, formatted,
and a few training steps lower the loss."""

from __future__ import annotations

import pytest
from helpers import ROOT
from train_utils import metrics

from l3m.dsl import compile_file
from l3m.dsl.fmt import format_text
from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")

EXAMPLES = ["mae_digits", "perceiver_digits"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_lint_clean_formatted_and_has_no_extension(name):
    path = ROOT / "examples" / f"{name}.l3m"
    compiled = compile_file(str(path))
    assert compiled.ok and not compiled.diagnostics, [(d.code, d.message) for d in compiled.diagnostics]
    text = path.read_text()
    assert "extension" not in text
    assert format_text(text) == text


@pytest.mark.parametrize(("name", "steps", "drop"), [("mae_digits", 30, 0.15), ("perceiver_digits", 40, 0.1)])
def test_example_trains_and_the_loss_falls(name, steps, drop, tmp_path):
    run = tmp_path / name
    overrides = [f"train.steps={steps}", "train.log_every=5", "train.eval_every=0", "train.checkpoint_every=0",
                 "log.wandb=disabled"]
    assert train_main(str(ROOT / "examples" / f"{name}.l3m"), overrides, output=str(run)) == 0
    losses = [r["loss"] for r in metrics(run)]
    assert len(losses) == steps // 5
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first - drop, losses

"""examples/vit_rope2d_digits.l3m: vit_digits with 2-D RoPE in every attention, by at most two lines
(one `default Attention(pos = Rope2d())` and a comment); lint clean, formatted, and it trains."""

from __future__ import annotations

import difflib

import pytest
from helpers import ROOT
from train_utils import metrics

from l3m import registry
from l3m.dsl import compile_file
from l3m.dsl.fmt import format_text
from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")

PATH = ROOT / "examples" / "vit_rope2d_digits.l3m"
BASE = ROOT / "examples" / "vit_digits.l3m"


def test_it_differs_from_vit_digits_by_at_most_two_lines():
    old, new = BASE.read_text().splitlines(), PATH.read_text().splitlines()
    changed = [line for line in difflib.ndiff(old, new) if line[:1] in "+-"]
    added = [line for line in changed if line.startswith("+")]
    assert len(added) <= 2 and len(changed) - len(added) <= 1, changed
    assert "+ default Attention(pos = Rope2d())" in changed


def test_it_is_lint_clean_and_every_attention_has_rope2d():
    compiled = compile_file(str(PATH))
    assert compiled.ok and not compiled.diagnostics, [(d.code, d.message) for d in compiled.diagnostics]
    text = PATH.read_text()
    assert "extension" not in text and format_text(text) == text
    registry.load_builtins()
    from l3m.model.blocks.attention import Attention
    from l3m.model.blocks.rope import Rope2d

    model = compiled.build_model()
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == 2 and all(isinstance(a.pos, Rope2d) for a in attns)
    base = compile_file(str(BASE)).build_model()
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in base.named_parameters()]  # no new weights


def test_it_trains_and_the_loss_falls(tmp_path):
    run = tmp_path / "rope2d"
    overrides = ["train.steps=20", "data.train.batch_size=32", "optimizer.lr=3e-3", "train.log_every=4",
                 "train.eval_every=0", "train.checkpoint_every=0", "log.wandb=disabled"]
    assert train_main(str(PATH), overrides, output=str(run)) == 0
    losses = [r["loss"] for r in metrics(run)]
    assert len(losses) == 5
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first - 0.2, losses

"""Tensor parallelism with each layer compiled (2 processes, gloo, CPU) trains with the losses of one
eager process: a Llama-style model whose token embedding (split by rows over the ranks) feeds the
first compiled layer directly (before `l3m.dist.tp_styles`' embedding style handed its output on as a
tensor of its own, the backward failed inside torch's redistribution), and AIMv2, whose decoder's
layers come after the encoder's with another sequence length (before `apply_compile(static=True)`,
tracing the dynamic-shape backward recursed without end)."""

from __future__ import annotations

import pytest
from dist_utils import LLM, ROOT, assert_same_losses, corpus_text, train_losses

pytestmark = pytest.mark.dist


def test_tp_with_compiled_layers_trains_like_one_eager_process(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text())
    program = tmp_path / "llama.l3m"
    text = "\n".join(line for line in LLM.format(corpus=corpus).splitlines() if "PosEmbed" not in line)
    program.write_text(text)
    single = train_losses(program, tmp_path / "single", [])
    tp = train_losses(program, tmp_path / "tp", ["mesh.tp=2", "train.compile=true"], nproc=2, timeout=300)
    assert_same_losses(single, tp, steps=4)


def test_tp_with_compiled_layers_of_two_trunks_trains_like_one_eager_process(tmp_path):
    program = ROOT / "examples" / "aimv2_digits.l3m"
    short = ["train.steps=2", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
             "log.wandb=disabled"]
    single = train_losses(program, tmp_path / "single", short)
    tp = train_losses(program, tmp_path / "tp", [*short, "mesh.tp=2", "train.compile=true"], nproc=2, timeout=300)
    assert_same_losses(single, tp, steps=2)

"""Shared pieces of the preemption, resume-change and lock tests: a tiny program with an evaluation
source and stochastic depth (so the random state matters), and the real CLI run in a subprocess
that sends itself a signal at a chosen moment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from fault_utils import env, write_program

from l3m.train.checkpoint import CheckpointManager, load_model_tensors
from l3m.train.logging import read_metrics

PROGRAM = """l3m 1
let dim = 16
data {{
  train: TextBytes(root = "{corpus}", seq_len = 8, batch_size = 2, max_bytes = 0, test_fraction = 0.1) -> tokens, targets
  val:   TextBytes(root = "{corpus}", seq_len = 8, batch_size = 2, max_bytes = 0, split = "test", test_fraction = 0.1) -> tokens, targets
}}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = dim) tokens -> x }}
  trunk        {{ blocks: Transformer(dim = dim, depth = 1, heads = 2, causal = true, drop_path = 0.1) x -> x }}
  head         {{ lm: LMHead(dim = dim, vocab = 256) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 3e-3, weight_decay = 0.01)
schedule WarmupCosine(warmup = 0.25)
train {{ steps = 8, log_every = 1, eval_every = 3, eval_steps = 2, checkpoint_every = 4, keep = 0 }}
log {{ wandb = "disabled", console = "plain" }}
"""

# Runs `l3m ARGS` (the CLI's main) after arranging for the process to signal itself:
#   SIG_AT=step:N   at the start of training step N      SIG_AT=eval:N  at the start of the evaluation of step N
#   SIG_AT=ckpt:N   while the checkpoint of step N is written (before its manifest)
#   SIG_COUNT (1), SIG_NAME (SIGTERM), SIG_RANK (every rank); NAP=seconds sleeps in every step.
WRAPPER = '''
import os, signal, sys, time
import l3m.dsl  # first, as the CLI imports it
from l3m.train import checkpoint, engine

what, _, n = os.environ.get("SIG_AT", ":0").partition(":")
n, count = int(n), int(os.environ.get("SIG_COUNT", "1"))
sig = getattr(signal, os.environ.get("SIG_NAME", "SIGTERM"))
rank = os.environ.get("SIG_RANK")
nap = float(os.environ.get("NAP", "0"))


def fire():
    if rank is None or rank == os.environ.get("RANK", "0"):
        for _ in range(count):
            os.kill(os.getpid(), sig)


step_fn, eval_fn, manifest_fn = engine.Trainer.train_step, engine.Trainer.run_eval, checkpoint.write_manifest


def train_step(self):
    if what == "step" and self.step == n:
        fire()
    time.sleep(nap)
    return step_fn(self)


def run_eval(self):
    if what == "eval" and self.step == n:
        fire()
    return eval_fn(self)


def write_manifest(directory, step):
    if what == "ckpt" and step == n:
        fire()
    return manifest_fn(directory, step)


engine.Trainer.train_step, engine.Trainer.run_eval, checkpoint.write_manifest = train_step, run_eval, write_manifest
from l3m.cli import main

sys.exit(main(sys.argv[1:]))
'''


def setup(tmp_path: Path, text: str = PROGRAM) -> tuple[Path, Path]:
    """(the program, the wrapper script) in `tmp_path`."""
    wrapper = tmp_path / "sigwrap.py"
    wrapper.write_text(WRAPPER)
    return write_program(tmp_path, text), wrapper


def run_cli(wrapper: Path, *args: str, cwd: Path, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
    """`l3m ARGS` through the wrapper, output captured."""
    return subprocess.run([sys.executable, str(wrapper), *args], cwd=cwd, env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def popen_cli(wrapper: Path, *args: str, cwd: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(wrapper), *args], cwd=cwd, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def losses(run: Path) -> dict[tuple[str, int], float]:
    """(split, step) -> loss of every record in the run's metrics.jsonl (a step logged twice fails)."""
    out: dict[tuple[str, int], float] = {}
    for r in read_metrics(run / "metrics.jsonl"):
        key = (r["split"], r["step"])
        assert key not in out, f"{key} logged twice in {run}"
        out[key] = r["loss"]
    return out


def steps_saved(run: Path) -> list[int]:
    return sorted(f.step for f in CheckpointManager(run / "ckpt").complete())


def assert_same_weights(a: Path, b: Path) -> None:
    wa = load_model_tensors(CheckpointManager(a / "ckpt").complete()[0].path)
    wb = load_model_tensors(CheckpointManager(b / "ckpt").complete()[0].path)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def stop_line(stderr: str) -> str:
    """The one line a stopped run ends with; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("l3m: stopped by")]
    assert len(lines) == 1, stderr
    return lines[0]

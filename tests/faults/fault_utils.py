"""Shared pieces of the fault-injection tests: a tiny program, and `l3m` run as a user runs it
(a subprocess of the real CLI), with faults set through `L3M_FAULT` (see `l3m.train.faults`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """l3m 1
let dim = 16
data {{
  train: TextBytes(root = "{corpus}", seq_len = 8, batch_size = 2, max_bytes = 0, test_fraction = 0.1) -> tokens, targets
}}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = dim) tokens -> x }}
  trunk        {{ blocks: Transformer(dim = dim, depth = 1, heads = 2, causal = true) x -> x }}
  head         {{ lm: LMHead(dim = dim, vocab = 256) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 3e-3)
train {{ steps = 6, log_every = 1, checkpoint_every = 2, keep = 0 }}
log {{ wandb = "disabled", console = "plain" }}
"""


def corpus_text() -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return "\n".join(" ".join(words[(i + j) % 8] for j in range(6)) + "." for i in range(60)) + "\n"


def write_program(directory: Path, text: str = PROGRAM, name: str = "tiny.l3m", data: Path | None = None) -> Path:
    """The program in `directory`, reading a corpus in `data` (default: the same directory)."""
    data = data or directory
    data.mkdir(parents=True, exist_ok=True)
    corpus = data / "corpus.txt"
    corpus.write_text(corpus_text())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text.format(corpus=corpus))
    return path


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out.update(L3M_DEVICE="cpu", WANDB_MODE="disabled", OMP_NUM_THREADS="1", L3M_PEAK_FLOPS="1e11")
    out.pop("L3M_FAULT", None)
    out.update(extra)
    return out


def l3m(*args: str, cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    """`python -m l3m ARGS` in `cwd`, output captured."""
    return subprocess.run([sys.executable, "-m", "l3m", *args], cwd=cwd, env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def torchrun(*args: str, cwd: Path, nproc: int = 2, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    """`l3m ARGS` on `nproc` processes under `torchrun --standalone`."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                "-m", "l3m"]
    return subprocess.run([*launcher, *args], cwd=cwd, env=env(**extra), capture_output=True, text=True,
                          timeout=timeout)

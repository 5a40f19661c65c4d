"""Shared pieces of the parallelism tests: a tiny LLM program and process launchers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import dist_env

ROOT = Path(__file__).resolve().parents[2]

# A byte-level LM that exercises every parallel path: grouped-query attention with qk-norm (its
# tensor-parallel plan has sequence-parallel norms), RoPE, a learned position table, SwiGLU, and
# a head tied to the embedding (`vp` makes it vocab-parallel under tensor parallelism).
LLM = """l3m 1
let dim = 32
let batch = 8  # the global batch: 8 samples per step on any mesh
let vp = false
data {{
  train: TextBytes(root = "{corpus}", seq_len = 16, batch_size = batch, max_bytes = 0, test_fraction = 0.1)
           -> tokens, targets
}}
model gpt {{
  preprocessor {{
    embed: TokenEmbedding(vocab = 256, dim = dim)  tokens -> x
    pos:   PosEmbed(dim = dim, num = 16)            x -> x
  }}
  trunk {{
    blocks: Transformer(dim = dim, depth = 2, heads = 4, kv_heads = 2, mlp = swiglu, multiple_of = 16,
                        causal = true, rope = true, qk_norm = true)  x -> x
  }}
  head {{ lm: LMHead(dim = dim, vocab = 256, tie = "embed", vocab_parallel = vp)  x -> logits }}
}}
loss ce: LMCrossEntropy(vocab_parallel = vp) logits, targets -> loss
optimizer AdamW(lr = 3e-3, weight_decay = 0.01)
train {{ steps = 4, log_every = 1, checkpoint_every = 2, keep = 0, grad_clip = 1.0, grad_accum = 2 }}
log {{ wandb = "disabled", console = "plain" }}
"""

# A tiny ViT on digits (patches, a cls token, positions; 17 tokens) whose trunk options, pooling, heads
# and losses each test fills in.
VIT = """l3m 1
data {{ train: DigitsImages(image_size = 16, batch_size = 8) -> image, label }}
model vit {{
  preprocessor {{
    patch: PatchEmbed(dim = 16, patch = 4, in_chans = 3) image -> x
    cls:   ClsToken(dim = 16)                             x -> x
    pos:   PosEmbed(dim = 16, num = 17)                   x -> x
  }}
  trunk {{ blocks: Transformer(dim = 16, depth = 2, heads = 2{trunk}) x -> x }}
  postprocessor {{
{post}
  }}
  head {{
{head}
  }}
}}
{losses}
optimizer AdamW(lr = 1e-2)
train {{ steps = {steps}, log_every = 1, checkpoint_every = 0, keep = 0 }}
log {{ wandb = "disabled", console = "plain" }}
"""


def corpus_text() -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return "\n".join(" ".join(words[(i + j) % 8] for j in range(6)) + "." for i in range(120)) + "\n"


def write_program(directory: Path) -> Path:
    corpus = directory / "corpus.txt"
    corpus.write_text(corpus_text())
    path = directory / "llm.l3m"
    path.write_text(LLM.format(corpus=corpus))
    return path


def child_env() -> dict[str, str]:
    return dist_env()


def run(args: list[str], nproc: int = 1, timeout: float = 150) -> subprocess.CompletedProcess:
    """`python ARGS` on one process, or under `torchrun --standalone` on `nproc`; output captured."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    return subprocess.run([*launcher, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def train_losses(program: Path, out: Path, overrides: list[str], nproc: int = 1,
                 timeout: float = 150) -> dict[int, float]:
    """`l3m train PROGRAM` on `nproc` processes into `out`: its training losses by step."""
    from l3m.train.logging import read_metrics

    proc = run(["-m", "l3m", "train", str(program), "--output", str(out), *overrides], nproc=nproc, timeout=timeout)
    assert proc.returncode == 0, f"{out.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"}


def assert_same_losses(a: dict[int, float], b: dict[int, float], steps: int, rel: float = 1e-5) -> None:
    """Two runs logged the same steps 1..steps with the same losses."""
    import pytest

    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step, want in a.items():
        assert b[step] == pytest.approx(want, rel=rel), step

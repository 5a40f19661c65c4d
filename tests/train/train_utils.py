"""Shared pieces of the engine tests: tiny programs and readers of a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from l3m.train.checkpoint import CheckpointManager, load_model_tensors
from l3m.train.logging import read_metrics

LLM = """l3m 1
let dim = 32
data {{
  train: TextBytes(root = "{corpus}", seq_len = 16, batch_size = 4, max_bytes = 0, test_fraction = 0.1) -> tokens, targets
  val:   TextBytes(root = "{corpus}", seq_len = 16, batch_size = 4, max_bytes = 0, split = "test", test_fraction = 0.1) -> tokens, targets
}}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = dim) tokens -> x }}
  trunk        {{ blocks: Transformer(dim = dim, depth = 1, heads = 2, causal = true) x -> x }}
  head         {{ lm: LMHead(dim = dim, vocab = 256) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
metric ppl: Perplexity() logits, targets -> ppl
optimizer AdamW(lr = 3e-3, weight_decay = 0.01)
schedule WarmupCosine(warmup = 0.1)
train {{ steps = 10, log_every = 1, checkpoint_every = 0, eval_every = 0, eval_steps = 2 }}
log {{ wandb = "disabled", console = "plain" }}
"""

DIGITS = """l3m 1
data {
  train: DigitsImages(image_size = 8, batch_size = 16) -> image, label
  test:  DigitsImages(image_size = 8, batch_size = 64, split = "test") -> image, label
}
model vit {
  preprocessor { patch: PatchEmbed(dim = 16, patch = 4, in_chans = 3) image -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  postprocessor { pool: AvgPool() x -> x }
  head         { cls: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
metric acc: TopKAccuracy() logits, label -> acc
optimizer AdamW(lr = 1e-2)
train { steps = 30, log_every = 10, eval_every = 15 }
log { wandb = "disabled", console = "plain" }
"""


def corpus_text() -> str:
    # Regular, learnable text (a byte LM gets its loss down on it within a few dozen steps).
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    lines = [" ".join(words[(i + j) % len(words)] for j in range(6)) + "." for i in range(120)]
    return "\n".join(lines) + "\n"


def metrics(run: Path, split: str = "train") -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == split]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    found = CheckpointManager(run / "ckpt").complete()
    assert found, f"no checkpoint in {run}"
    return load_model_tensors(found[0].path)


def steps_saved(run: Path) -> list[int]:
    return sorted(f.step for f in CheckpointManager(run / "ckpt").complete())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env

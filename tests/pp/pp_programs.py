"""Tiny programs for the pipeline tests: an LLM (one key crosses a cut; evaluated at the end on batches
of 6, 6, 6 and 2, which the stages pass on one whole batch at a time) and a CLIP (several keys cross)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LLM = """l3m 1
import "{root}/models/llm.l3m" as llm
data {{
  train: Synthetic(kind = "tokens", vocab = 64, seq_len = 16, batch_size = 8, length = 256) -> tokens, targets
  eval:  Synthetic(kind = "tokens", vocab = 64, seq_len = 16, batch_size = 6, length = 20, seed = 3,
                   shuffle = false, drop_last = false) -> tokens, targets
}}
model gpt = llm.GPT(vocab = 64, context = 16, dim = 32, depth = 4, heads = 2)  tokens -> logits
loss   ce:  LMCrossEntropy()  logits, targets -> loss
metric ppl: Perplexity()      logits, targets -> ppl
optimizer AdamW(lr = 3e-3, weight_decay = 0.1, no_decay = ["*bias", "*norm*"])
train {{ steps = 5, grad_clip = 1.0, grad_accum = 2, log_every = 1, keep = 1 }}
log   {{ wandb = "disabled", console = "plain" }}
"""

# Cut inside the text trunk (mesh.pp_split), four keys cross: the image tower's two outputs, the
# caption ids the text tower's pooling reads again, and the trunk's running state.
CLIP = """l3m 1
import "{root}/models/clip.l3m" as clip
data {{
  train: Synthetic(kind = "image_text", image_size = 8, vocab = 32, seq_len = 8, batch_size = 8, length = 256)
           -> image, text
}}
model clip {{
  model image = clip.ImageTower(dim = 32, depth = 2, heads = 2, embed_dim = 16, patch = 4, image_size = 8)
                image -> image_emb, logit_scale
  model text  = clip.TextTower(dim = 32, depth = 2, heads = 2, embed_dim = 16, vocab = 32, text_len = 8, eos_id = 2)
                text -> text_emb
}}
loss contrastive: ClipLoss()  image_emb, text_emb, logit_scale -> loss
optimizer AdamW(lr = 1e-3, weight_decay = 0.1)
train {{ steps = 5, grad_clip = 1.0, grad_accum = 2, log_every = 1, keep = 1 }}
log   {{ wandb = "disabled", console = "plain" }}
"""

TEXT_SPLIT = 'mesh.pp_split=["clip.text.trunk.blocks.layers.1"]'


def write_programs(directory: Path) -> tuple[Path, Path]:
    llm, clip = directory / "llm.l3m", directory / "clip.l3m"
    llm.write_text(LLM.format(root=ROOT))
    clip.write_text(CLIP.format(root=ROOT))
    return llm, clip

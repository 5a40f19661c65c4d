"""Tiny programs of the fine-tuning tests: a ViT on the shipped digits, with and without adapters."""

from __future__ import annotations

# {extra}: lines before `data` (a `default` adding LoRA or adapters); {train}: more train settings.
VIT = """l3m 1
{extra}
data {{
  train: DigitsImages(image_size = 8, batch_size = 16) -> image, label
}}
model vit {{
  preprocessor {{ patch: PatchEmbed(dim = 16, patch = 4, in_chans = 3) image -> x }}
  trunk        {{ blocks: Transformer(dim = 16, depth = 2, heads = 4, kv_heads = 2) x -> x }}
  postprocessor {{ pool: AvgPool() x -> x }}
  head         {{ cls: Classifier(dim = 16, num_classes = 10) x -> logits }}
}}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 1e-2, weight_decay = 0.1)
train {{ steps = 3, log_every = 1{train} }}
log {{ wandb = "disabled", console = "plain" }}
"""

LORA = "default Attention(lora = Lora(rank = 2, alpha = 4.0))"
ADAPTER = "default Transformer(adapter = Adapter(hidden = 4))"


def vit(tmp_path, name: str, extra: str = "", train: str = ""):
    """The program written to `tmp_path/name.l3m`."""
    path = tmp_path / f"{name}.l3m"
    path.write_text(VIT.format(extra=extra, train=train))
    return path

"""Tiny decoders built from the examples with random weights (no training)."""

from __future__ import annotations

from helpers import ROOT

# Byte-level tokens keep the vocabulary (and the models) small.
BYTES = ["tokenizer=bytes", "vocab=256"]
MODELS = {
    "llm": ("examples/llm_bytes.l3m", [*BYTES]),
    "llama": ("examples/llama_tiny.l3m", [*BYTES]),  # GQA (4 heads, 2 key/value heads), RoPE, tied head
    "llama_unfused": ("examples/llama_tiny.l3m", [*BYTES, "llama.fused_qkv=false", "llama.kv_heads=1"]),
    "aimv2": ("examples/aimv2_digits.l3m", []),  # captions (shipped digits_bpe) conditioned on an image
}


def build(name: str, seed: int = 0):
    """A random-weight model of MODELS[name], in eval mode."""
    import torch

    import l3m
    from l3m.model.build import materialize

    path, overrides = MODELS[name]
    torch.manual_seed(seed)
    return materialize(l3m.load(str(ROOT / path), overrides).build_model(), check=False).eval()


def save_weights(model, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))

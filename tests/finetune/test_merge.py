"""LoRA merged into the base weights computes what the LoRA'd model computes, for every projection layout
(fused grouped-query qkv, separate q/k/v, cross-attention), and exports as a plain Hugging Face model."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT
from safetensors.torch import save_file

import l3m
from l3m.model.adapters import merged_state
from l3m.model.blocks.attention import Attention
from l3m.model.blocks.peft import Lora, LoraLinear
from l3m.model.blocks.transformer import CrossAttentionDecoder, Transformer
from l3m.model.components import Factory
from l3m.model.init import init_model


def _lora_attention(**lora):
    return Factory("Attention", Attention, {"lora": Factory("Lora", Lora, {"rank": 3, "alpha": 6.0, **lora})})


def _trained(model):
    """`model` initialised, with its LoRA B no longer zero (as after fine-tuning)."""
    torch.manual_seed(0)
    init_model(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.lora_B.normal_(std=0.3)
    return model.eval()


@pytest.mark.parametrize(("cls", "kwargs", "lora"), [
    (Transformer, dict(kv_heads=2), {}),
    (Transformer, dict(fused_qkv=False, qkv_bias=True, proj_bias=True), {"k": False}),
    (CrossAttentionDecoder, dict(context_dim=12), {"proj": False}),
    (CrossAttentionDecoder, dict(context_dim=12, fused_qkv=False, kv_heads=1), {"q": False}),
])
def test_merged_weights_give_the_lora_output(cls, kwargs, lora):
    tuned = _trained(cls(dim=16, depth=2, heads=4, attn=_lora_attention(**lora), **kwargs))
    plain = cls(dim=16, depth=2, heads=4, **kwargs).eval()
    merged = merged_state(tuned, tuned.state_dict())
    assert not [k for k in merged if "lora" in k]
    plain.load_state_dict(merged, strict=True)
    x = torch.randn(2, 7, 16)
    extra = {"context": torch.randn(2, 5, 12)} if cls is CrossAttentionDecoder else {}
    with torch.no_grad():
        want, got = tuned(x, **extra)[0], plain(x, **extra)[0]
        unmerged = cls(dim=16, depth=2, heads=4, **kwargs).eval()
        unmerged.load_state_dict({k: v for k, v in tuned.state_dict().items() if "lora" not in k})
        assert (unmerged(x, **extra)[0] - want).abs().max() > 1e-3  # the LoRA update is not negligible
    assert (want - got).abs().max() < 1e-5


TINY = ROOT / "examples" / "llama_tiny.l3m"
SHAPE = ["llama.dim=64", "llama.depth=2", "llama.heads=4", "llama.kv_heads=2", "llama.hidden=96"]


def test_hf_export_merges_lora(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    text = TINY.read_text().replace('import "../models/', f'import "{ROOT}/models/')
    program = tmp_path / "llama_lora.l3m"
    program.write_text(text.replace("l3m 1\n", "l3m 1\ndefault Attention(lora = Lora(rank = 4))\n", 1))
    from l3m.model.build import materialize

    model = materialize(l3m.load(str(program), SHAPE).build_model(), "cpu").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2 if "lora" not in name else 0.5)
    assert sum(k.endswith("lora_B") for k in model.state_dict()) == 4
    weights = tmp_path / "w.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(weights))
    l3m.export(weights, tmp_path / "hf", "hf", file=program, overrides=SHAPE)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = torch.randint(0, 2048, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ref(tokens).logits, model({"tokens": tokens})["logits"], atol=1e-4, rtol=1e-4)


def test_hf_export_refuses_bottleneck_adapters(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    text = TINY.read_text().replace('import "../models/', f'import "{ROOT}/models/')
    program = tmp_path / "llama_adapter.l3m"
    program.write_text(text.replace("l3m 1\n", "l3m 1\ndefault Transformer(adapter = Adapter(hidden = 4))\n", 1))
    with pytest.raises(ValueError, match="Adapter blocks"):
        l3m.export(tmp_path / "none.safetensors", tmp_path / "hf", "hf", file=program, overrides=SHAPE)

"""Hugging Face Llama <-> l3m: randomly initialised reference models (no download) give the same
logits in fp32 as the l3m model that imports their weights, and the export gives the same tensors back."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import ROOT

import l3m
from l3m.interop import export_main, import_main, load_foreign, save_foreign
from l3m.interop.llama import check_llama_config, l3m_to_llama, llama_to_l3m
from l3m.model.blocks.embeddings import RotaryEmbedding
from l3m.model.build import materialize
from l3m.plan import plan
from l3m.train.export import load_pretrained, read_weights

TINY = str(ROOT / "examples" / "llama_tiny.l3m")
VOCAB = 2048  # the tiny example's vocabulary (the shipped stdlib_bpe_2k tokenizer)


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def hf_llama(transformers, dim=64, heads=4, kv_heads=2, hidden=96, tie=False, rope=None, bias=False):
    """A small LlamaForCausalLM with every parameter random (norms and biases too, so a
    misplaced one shows)."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        max_position_embeddings=128, attention_bias=bias, attn_implementation="eager",
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def overrides(dim=64, heads=4, kv_heads=2, hidden=96, tie=False, fused=True, extra=()):
    return [f"llama.dim={dim}", "llama.depth=2", f"llama.heads={heads}", f"llama.kv_heads={kv_heads}",
            f"llama.hidden={hidden}", f"llama.fused_qkv={'true' if fused else 'false'}",
            'llama.tie="embed"' if tie else 'llama.tie=""', *extra]  # fmt: skip


def l3m_llama(**kw):
    return materialize(l3m.load(TINY, overrides(**kw)).build_model(), "cpu").eval()


def hf_state(ref, tie):
    """The state dict as a Hugging Face checkpoint stores it (a tied head is not written)."""
    return {k: v for k, v in ref.state_dict().items() if not (tie and k == "lm_head.weight")}


def logits_close(ref, model, n=24):
    tokens = torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(tokens).logits, model({"tokens": tokens})["logits"]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    return want, got


@pytest.mark.parametrize(
    "kw",
    [
        dict(fused=True, tie=False),
        dict(fused=False, tie=True),
        dict(fused=True, tie=True, kv_heads=1),  # multi-query
        dict(fused=False, tie=False, kv_heads=4),  # plain multi-head
        dict(fused=True, tie=False, bias=True),  # attention_bias = true
    ],
    ids=["fused", "separate-tied", "mqa-tied", "mha", "qkv-bias"],
)
def test_logits_match_hf_and_export_round_trips(transformers, kw):
    bias = kw.pop("bias", False)
    ref = hf_llama(transformers, kv_heads=kw.get("kv_heads", 2), tie=kw["tie"], bias=bias)
    extra = ["llama.trunk.blocks.qkv_bias=true", "llama.trunk.blocks.proj_bias=true"] if bias else []
    model = l3m_llama(**kw, extra=extra)
    state = hf_state(ref, kw["tie"])
    report = load_pretrained(model, llama_to_l3m(state, model))
    assert report.ok and len(report.loaded) == len(model.state_dict())
    logits_close(ref, model)
    back = l3m_to_llama(model.state_dict(), model)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_fused_layout_needs_the_regrouping(transformers):
    """Copying q, k, v rows end to end (the obvious, wrong fusion) changes the model."""
    ref = hf_llama(transformers)
    model = l3m_llama(fused=True)
    converted = llama_to_l3m(ref.state_dict(), model)
    sd = ref.state_dict()
    for i in range(2):
        a = f"model.layers.{i}.self_attn."
        naive = torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
        assert not torch.equal(naive, converted[f"llama.trunk.blocks.layers.{i}.attn.qkv.weight"])
        converted[f"llama.trunk.blocks.layers.{i}.attn.qkv.weight"] = naive
    load_pretrained(model, converted)
    with pytest.raises(AssertionError):
        logits_close(ref, model)


def test_llama3_rope_scaling_matches(transformers):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    ref = hf_llama(transformers, rope=rope)
    scaled = l3m_llama(extra=["llama.rope_theta=500000.0", "llama.rope_scaling=[8.0, 1.0, 4.0, 64]"])
    plain = l3m_llama(extra=["llama.rope_theta=500000.0"])
    for m in (scaled, plain):
        load_foreign(m, "llama", ref.state_dict())
    logits_close(ref, scaled, n=48)
    with pytest.raises(AssertionError):
        logits_close(ref, plain, n=48)
    assert check_llama_config(ref.config.to_dict(), scaled) == []
    problems = check_llama_config(ref.config.to_dict(), plain)
    assert len(problems) == 1 and "rope_scaling = [8.0, 1.0, 4.0, 64.0]" in problems[0]


def test_rope_scaling_bands():
    """Short wavelengths are kept, long ones divided by the factor, the band between blended."""
    plain, scaled = RotaryEmbedding(16, 10000.0), RotaryEmbedding(16, 10000.0, [8.0, 1.0, 4.0, 64])
    wavelen = 2 * math.pi / plain.inv_freq.double()
    short, long_ = wavelen < 16, wavelen > 64
    assert short.any() and long_.any() and (~short & ~long_).any()
    torch.testing.assert_close(scaled.inv_freq[short], plain.inv_freq[short])
    torch.testing.assert_close(scaled.inv_freq[long_], plain.inv_freq[long_] / 8)
    mid = ~short & ~long_
    between = (scaled.inv_freq[mid] < plain.inv_freq[mid]) & (scaled.inv_freq[mid] > plain.inv_freq[mid] / 8)
    assert between.all()
    with pytest.raises(ValueError, match="rope scaling"):
        RotaryEmbedding(16, scaling=[8.0, 4.0, 1.0, 64])


def test_cli_import_from_sharded_save_pretrained_and_export_back(transformers, tmp_path, capsys):
    """`save_pretrained` output (config.json + safetensors shards) -> l3m names -> HF names again."""
    ref = hf_llama(transformers, tie=True)
    ref.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    shards = sorted((tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) > 1
    out = tmp_path / "llama_l3m.safetensors"
    assert import_main("llama", str(tmp_path / "hf"), TINY, str(out), overrides(tie=True)) == 0
    assert "imported" in capsys.readouterr().out
    model = l3m_llama(tie=True)
    assert load_pretrained(model, out).ok
    logits_close(ref, model)

    original: dict[str, torch.Tensor] = {}
    for shard in shards:
        original.update(read_weights(shard))
    hf_out = tmp_path / "back.safetensors"
    assert export_main("llama", str(out), TINY, str(hf_out), overrides(tie=True)) == 0
    back = read_weights(hf_out)
    assert sorted(back) == sorted(original) and "lm_head.weight" not in back
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert save_foreign(model, "llama", tmp_path / "direct.safetensors") == len(original)
    direct = read_weights(tmp_path / "direct.safetensors")
    assert all(torch.equal(direct[k], original[k]) for k in original)


def test_cli_refuses_a_config_that_disagrees(transformers, tmp_path, capsys):
    ref = hf_llama(transformers)
    ref.save_pretrained(tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rms_norm_eps"] = 1e-6
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "out.safetensors"
    assert import_main("llama", str(tmp_path / "hf" / "model.safetensors"), TINY, str(out), overrides()) == 1
    err = capsys.readouterr().err
    assert "rms_norm_eps is 1e-06" in err and not out.exists()


def test_cli_errors(transformers, tmp_path, capsys):
    from safetensors.torch import save_file

    ref = hf_llama(transformers)
    src = tmp_path / "w.safetensors"
    out = str(tmp_path / "out.safetensors")
    save_file({**ref.state_dict(), "model.layers.0.extra.weight": torch.zeros(2)}, str(src))
    assert import_main("llama", str(src), TINY, out, overrides()) == 1
    assert "no rule for model.layers.0.extra.weight" in capsys.readouterr().err
    save_file(ref.state_dict(), str(src))
    assert import_main("llama", str(src), TINY, out, overrides(hidden=128)) == 1  # wrong MLP width
    assert "wrong shape" in capsys.readouterr().err
    assert import_main("llama", str(src), TINY, out, ["llama.dimm=64"]) == 1  # a typo in an override
    assert import_main("llama", str(tmp_path / "missing.safetensors"), TINY, out, overrides()) == 2
    assert import_main("gpt", str(src), TINY, out, overrides()) == 1
    assert "unknown checkpoint kind 'gpt'" in capsys.readouterr().err


def test_non_llama_models_are_refused():
    model = l3m.load(str(ROOT / "examples" / "llm_bytes.l3m")).build_model()
    with pytest.raises(ValueError, match="not Llama-shaped.*rope = true"):
        llama_to_l3m({}, model)


def test_full_size_file_is_llama_3_2_1b(transformers):
    """models/llama.l3m has Llama-3.2-1B's parameter count, names, shapes and config (on meta)."""
    compiled = l3m.load(str(ROOT / "models" / "llama.l3m"))
    planned = plan(compiled.program, world_size=8, schedule=compiled.flow.model_order())
    assert planned["params"]["total"] == 1_235_814_400
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    cfg = dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        tie_word_embeddings=True, hidden_act="silu", max_position_embeddings=131072, rope_parameters=rope,
    )  # fmt: skip
    with torch.device("meta"):
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    model = compiled.build_model()
    state = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assert load_pretrained(model, llama_to_l3m(state, model)).ok
    assert check_llama_config(ref.config.to_dict(), model) == []

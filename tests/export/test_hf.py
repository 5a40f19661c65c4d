"""`l3m export --format hf`: a Llama-style l3m model as a Hugging Face folder that
`transformers.AutoModelForCausalLM.from_pretrained` loads (local folder, nothing downloaded) and
whose logits match l3m's; the run's tokenizer encodes the same ids through `AutoTokenizer`."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from helpers import ROOT
from safetensors.torch import save_file

import l3m
from l3m.cli import main
from l3m.data.tokenizers import load_tokenizer
from l3m.model.build import materialize
from l3m.train.export import load_pretrained, read_weights

TINY = str(ROOT / "examples" / "llama_tiny.l3m")
SHAPE = ["llama.dim=64", "llama.depth=2", "llama.heads=4", "llama.kv_heads=2", "llama.hidden=96"]


def shape(*extra: str) -> list[str]:
    """SHAPE with `extra` overrides (a later one of the same path wins)."""
    merged = {o.split("=", 1)[0]: o for o in [*SHAPE, *extra]}
    return list(merged.values())

TEXT = "def f(x):\n    return x + 1  # héllo, wörld ✓\n\tclass A: pass\n"


def l3m_model(overrides, seed=0):
    """The tiny Llama with every tensor random (norms too, so a misplaced one shows)."""
    model = materialize(l3m.load(TINY, overrides).build_model(), "cpu").eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def save_weights(model, path):
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


def assert_logits_match(transformers, out, model, vocab=2048, n=20):
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens = torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(tokens).logits, model({"tokens": tokens})["logits"]
    torch.testing.assert_close(want, got, atol=1e-4, rtol=1e-4)
    return ref


def assert_ordinary_modes(folder):
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert not [f for f in folder.iterdir() if f.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "extra",
    [
        ['llama.tie=""'],
        ['llama.tie="embed"', "llama.fused_qkv=false", "llama.kv_heads=1"],
        ['llama.tie="embed"', "llama.rope_scaling=[8.0, 1.0, 4.0, 32]", "llama.rope_theta=500000.0"],
        ['llama.tie=""', "llama.trunk.blocks.qkv_bias=true", "llama.trunk.blocks.mlp_bias=true"],
    ],
    ids=["fused-untied", "separate-tied-mqa", "llama3-rope", "qkv-and-mlp-bias"],
)
def test_folder_loads_in_transformers_with_the_same_logits(transformers, quiet_run, extra):
    overrides = shape(*extra)
    model = l3m_model(overrides)
    weights = save_weights(model, quiet_run / "w.safetensors")
    result = l3m.export(weights, quiet_run / "hf", "hf", file=TINY, overrides=overrides)
    names = sorted(p.name for p in result.files)
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    ref = assert_logits_match(transformers, quiet_run / "hf", model)
    cfg = json.loads((quiet_run / "hf" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == ('llama.tie="embed"' in extra)
    assert cfg["num_key_value_heads"] == (1 if "llama.kv_heads=1" in extra else 2)
    assert cfg["max_position_embeddings"] >= 64  # the data's seq_len
    if "llama.trunk.blocks.qkv_bias=true" in extra:  # o_proj has no bias in l3m: written as zeros
        assert cfg["attention_bias"] and cfg["mlp_bias"]
        assert torch.count_nonzero(ref.model.layers[0].self_attn.o_proj.bias) == 0
        assert torch.count_nonzero(ref.model.layers[0].self_attn.q_proj.bias) > 0
    assert_ordinary_modes(quiet_run / "hf")


def test_trained_run_exports_from_its_own_record(transformers, quiet_run, capsys):
    """A run trained 2 steps: `l3m export RUN OUT --format hf` finds the program, its overrides and
    its tokenizer in the run directory; logits and token ids agree with l3m's."""
    from l3m.train.api import train_main

    text = quiet_run / "text"
    text.mkdir()
    (text / "a.py").write_text(TEXT * 400)
    overrides = [*shape('llama.tie="embed"'), f"data.train.root={text}", f"data.eval.root={text}", "context=16",
                 "train.steps=2", "train.eval_every=0", "train.checkpoint_every=2", "train.log_every=1"]
    run = quiet_run / "run"
    assert train_main(TINY, overrides, output=str(run)) == 0
    capsys.readouterr()
    assert main(["export", str(run), str(quiet_run / "hf"), "--format", "hf"]) == 0
    out = capsys.readouterr().out
    assert "(step 2) as hf" in out
    model = materialize(l3m.load(TINY, overrides).build_model(), "cpu").eval()
    assert load_pretrained(model, read_weights(run)).ok
    assert_logits_match(transformers, quiet_run / "hf", model)
    cfg = json.loads((quiet_run / "hf" / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 16 and cfg["eos_token_id"] is not None

    ours = load_tokenizer("stdlib_bpe_2k")
    theirs = transformers.AutoTokenizer.from_pretrained(str(quiet_run / "hf"))
    assert theirs(TEXT, add_special_tokens=False).input_ids == ours.encode(TEXT)
    assert theirs.decode(ours.encode(TEXT)) == ours.decode(ours.encode(TEXT))
    assert theirs.eos_token_id == ours.eos_id == cfg["eos_token_id"]
    assert_ordinary_modes(quiet_run / "hf")

    # One checkpoint directory of the run finds the same record.
    step = l3m.export(run / "ckpt" / "step_000002", quiet_run / "hf2", "hf")
    assert step.step == 2 and (quiet_run / "hf2" / "tokenizer.json").read_bytes() == (
        quiet_run / "hf" / "tokenizer.json").read_bytes()

    # The other exports of the same run are ordinary files too (safetensors alone writes 0600).
    plain = quiet_run / "plain"
    assert main(["export", str(run), str(plain / "model.safetensors")]) == 0
    assert l3m.export(run, plain / "api.safetensors").step == 2
    assert main(["export", str(run), str(plain / "llama.safetensors"), "--to", "llama", "--file", TINY,
                 *overrides]) == 0
    assert_ordinary_modes(plain)


def test_byte_tokenizer_is_written_as_bytes(transformers, quiet_run):
    """tokenizer = "bytes": a tokenizer.json whose ids are the UTF-8 bytes, as l3m's."""
    overrides = shape('tokenizer="bytes"', "vocab=256", 'llama.tie=""')
    model = l3m_model(overrides)
    weights = save_weights(model, quiet_run / "w.safetensors")
    l3m.export(weights, quiet_run / "hf", "hf", file=TINY, overrides=overrides)
    assert_logits_match(transformers, quiet_run / "hf", model, vocab=256)
    tok = transformers.AutoTokenizer.from_pretrained(str(quiet_run / "hf"))
    assert tok(TEXT, add_special_tokens=False).input_ids == list(TEXT.encode("utf-8"))
    assert tok.decode(list(TEXT.encode("utf-8"))) == TEXT


def test_dtype_cast(transformers, quiet_run):
    model = l3m_model(shape('llama.tie=""'))
    weights = save_weights(model, quiet_run / "w.safetensors")
    l3m.export(weights, quiet_run / "hf", "hf", file=TINY, overrides=shape('llama.tie=""'), dtype="bf16")
    cfg = json.loads((quiet_run / "hf" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(quiet_run / "hf"), dtype="auto")
    assert ref.model.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "file, overrides, names",
    [
        ("examples/llm_bytes.l3m", [], ["gpt.preprocessor.pos (PosEmbed)", "rope = true", "norm = rmsnorm"]),
        ("examples/vit_digits.l3m", [], ["vit.preprocessor.patches (PatchEmbed)", "TokenEmbedding"]),
        ("examples/llama_tiny.l3m", ["llama.head.lm.bias=true"], ["has a bias"]),
        ("examples/llama_tiny.l3m", ["llama.trunk.blocks.mlp=gelu"], ["mlp = swiglu"]),
    ],
    ids=["gpt-like", "vit", "head-bias", "gelu-mlp"],
)
def test_models_that_do_not_map_are_refused_by_name(quiet_run, capsys, file, overrides, names):
    weights = quiet_run / "w.safetensors"
    weights.write_bytes(b"")  # never read: the model is refused first
    argv = ["export", str(weights), str(quiet_run / "hf"), "--format", "hf", "--file", str(ROOT / file), *overrides]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert all(n in err for n in names), err
    assert "Traceback" not in err and not (quiet_run / "hf").exists()


def test_usage_errors(quiet_run, capsys):
    assert main(["export", str(quiet_run / "none"), str(quiet_run / "hf"), "--format", "hf", "--file", TINY]) == 2
    assert "no such" in capsys.readouterr().err
    # A weights file outside any run needs the program.
    weights = save_weights(l3m_model(shape('llama.tie=""')), quiet_run / "w.safetensors")
    assert main(["export", str(weights), str(quiet_run / "hf"), "--format", "hf"]) == 1
    assert "--file" in capsys.readouterr().err
    # Weights of another shape do not fit the program.
    assert main(["export", str(weights), str(quiet_run / "hf"), "--format", "hf", "--file", TINY]) == 1
    assert "do not fit" in capsys.readouterr().err
    assert main(["export", str(weights), str(quiet_run / "hf"), "--format", "hf", "--to", "llama"]) == 2

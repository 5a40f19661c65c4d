"""`l3m generate` and `l3m.generate`: text from a weights file and its program; bad input is one
line on stderr and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from gen_models import build, save_weights
from helpers import ROOT

import l3m
from l3m.cli import main


def args_of(weights, tokenizer: str = "bytes") -> list[str]:
    path, program, _ = weights
    return ["generate", str(path), "--file", str(program), "vocab=256", f"tokenizer={tokenizer}"]


def test_generate_prints_each_prompt_with_its_continuation(llama_weights, capsys):
    code = main([*args_of(llama_weights), "--prompt", "def f(", "--prompt", "x", "--max-new-tokens", "5"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == 2 and out[0].startswith("def f(") and out[1].startswith("x")


def test_python_api_matches_the_command_and_is_reproducible(llama_weights, capsys):
    path, program, overrides = llama_weights
    kw = dict(file=program, overrides=overrides, max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    texts = l3m.generate(path, ["def f(", "x"], **kw)
    assert texts == l3m.generate(path, ["def f(", "x"], **kw)
    assert l3m.generate(path, ["def f(", "x"], **{**kw, "use_cache": False}) == texts
    main([*args_of(llama_weights), "--prompt", "def f(", "--prompt", "x", "--max-new-tokens", "6",
          "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"])
    assert capsys.readouterr().out == f"def f({texts[0]}\nx{texts[1]}\n"


@pytest.mark.parametrize("extra, message", [
    (["--prompt", ""], "empty prompt"),
    ([], "give at least one --prompt"),
    (["--prompt", "x", "--top-p", "0"], "--top-p"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "x", "--image", "x.png"], "reads no image"),
    (["--prompt", "x", "--device", "gpu"], "unknown device"),
])
def test_bad_input_is_one_line_and_exit_2(llama_weights, capsys, extra, message):
    assert main([*args_of(llama_weights), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("tokenizer", ["/nowhere/tokenizer.json", ""])  # moved away; left to an unset variable
def test_a_tokenizer_that_is_not_there(llama_weights, capsys, tokenizer):
    assert main([*args_of(llama_weights, tokenizer), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer" in err[0], err


def test_no_checkpoint(capsys, tmp_path):
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "no such run" in capsys.readouterr().err


def test_a_weights_file_outside_a_run_needs_its_program(llama_weights, capsys):
    assert main(["generate", str(llama_weights[0]), "--prompt", "x"]) == 2
    assert "--file" in capsys.readouterr().err


def test_a_model_without_a_causal_decoder(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # never read: the model is refused first
    assert main(["generate", str(weights), "--file", str(ROOT / "examples/vit_digits.l3m"), "--prompt", "x"]) == 2
    assert "not a causal text decoder" in capsys.readouterr().err


def test_weights_of_another_model_exit_1(tmp_path, capsys):
    weights = tmp_path / "llm.safetensors"
    save_weights(build("llm"), weights)
    code = main(["generate", str(weights), "--file", str(ROOT / "examples/llama_tiny.l3m"), "tokenizer=bytes",
                 "vocab=256", "--prompt", "x"])
    assert code == 1
    assert "do not fit" in capsys.readouterr().err


def test_the_command_line_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "l3m", "generate", str(tmp_path / "nothing"), "--prompt", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1

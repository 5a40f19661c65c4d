"""Hostile `.l3m` input: imports of files that are not sources, secrets in `${...}`, evaluations that
would take unbounded time, memory or stack. Each gives a diagnostic with a code, never a crash."""

from __future__ import annotations

import importlib
import json
import os
from types import SimpleNamespace

import pytest

from l3m.dsl import compile_file
from l3m.dsl.diagnostics import render_json, render_text
from l3m.dsl.limits import MAX_FILE_BYTES, secret_word

HEAD = "l3m 1\n"
SECRET = "root:$6$SECRETHASHxyz:19000:0:99999"


def _compile(tmp_path, text: str, overrides=(), name: str = "prog.l3m"):
    path = tmp_path / name
    path.write_text(text)
    return compile_file(str(path), overrides)


def _all_output(compiled) -> str:
    return "\n".join(render_text(d, compiled.sources) for d in compiled.diagnostics) + render_json(compiled.diagnostics)


def _errors(compiled, code: str):
    hits = [d for d in compiled.errors if d.code == code]
    assert hits, [(d.code, d.message) for d in compiled.diagnostics]
    return hits


@pytest.fixture
def l3m(tmp_path, capsys, monkeypatch):
    """The command line, run in this process (in tmp_path): exit code, stdout, stderr."""
    from l3m.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


# ----------------------------------------------------------------------------- imports read .l3m sources only


def test_importing_a_secret_file_never_shows_its_contents(tmp_path, l3m):
    (tmp_path / "shadow").write_text(SECRET + "\nsecond line\n")
    (tmp_path / "shadow.l3m").symlink_to(tmp_path / "shadow")
    (tmp_path / "latin.l3m").write_bytes(SECRET.encode() + b"\n\xff\xfe")
    src = HEAD + 'import "shadow" as a\nimport "shadow.l3m" as b\nimport "latin.l3m" as c\n'
    compiled = _compile(tmp_path, src)
    (by_name, by_link) = _errors(compiled, "E410")
    assert (by_name.span.line, by_name.span.col) == (2, 8) and "not a .l3m file" in by_name.message
    assert (by_link.span.line, by_link.span.col) == (3, 8) and "links to" in by_link.message
    (text,) = _errors(compiled, "E413")
    assert text.span.line == 4 and "not UTF-8" in text.message
    assert not any(d.code == "E001" for d in compiled.diagnostics)  # refused before parsing
    assert "SECRETHASH" not in _all_output(compiled)
    r = l3m("lint", "prog.l3m")
    assert r.returncode == 1 and "error[E410]" in r.stderr
    assert "SECRETHASH" not in r.stdout + r.stderr


def test_the_file_on_the_command_line_is_checked_too(tmp_path, l3m):
    (tmp_path / "shadow").write_text(SECRET + "\n")
    r = l3m("lint", "shadow")
    assert r.returncode == 2 and "error[E002]" in r.stderr and "not a .l3m file" in r.stderr
    assert "SECRETHASH" not in r.stdout + r.stderr


def test_dev_zero_is_refused_without_reading(tmp_path):
    (tmp_path / "zero.l3m").symlink_to("/dev/zero")
    compiled = _compile(tmp_path, HEAD + 'import "/dev/zero" as z\nimport "zero.l3m" as y\n')
    assert [d.span.line for d in _errors(compiled, "E410")] == [2, 3]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_without_opening_it(tmp_path, l3m):
    os.mkfifo(tmp_path / "pipe.l3m")  # opening it for reading would block until a writer comes
    compiled = _compile(tmp_path, HEAD + 'import "pipe.l3m" as p\n')
    (d,) = _errors(compiled, "E411")
    assert (d.span.line, d.span.col) == (2, 8) and "named pipe" in d.message
    r = l3m("lint", "prog.l3m")
    assert r.returncode == 1 and "prog.l3m:2:8: error[E411]" in r.stderr
    r = l3m("lint", "pipe.l3m")
    assert r.returncode == 2 and "error[E002]" in r.stderr and "named pipe" in r.stderr


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "dir.l3m").mkdir()
    (d,) = _errors(_compile(tmp_path, HEAD + 'import "dir.l3m" as d\n'), "E411")
    assert "directory" in d.message


def test_an_oversized_file_is_refused_by_its_size(tmp_path, l3m):
    big = tmp_path / "big.l3m"
    with open(big, "wb") as f:  # sparse: nothing is written, and nothing must be read
        f.truncate(MAX_FILE_BYTES + 1)
    (d,) = _errors(_compile(tmp_path, HEAD + 'import "big.l3m" as b\n'), "E412")
    assert "16 MiB" in d.message and d.span.line == 2
    r = l3m("lint", "big.l3m")
    assert r.returncode == 2 and "16 MiB" in r.stderr


def test_ordinary_imports_still_work(tmp_path):
    (tmp_path / "lib.l3m").write_text(HEAD + "let dim = 8\n")
    (tmp_path / "alias.l3m").symlink_to(tmp_path / "lib.l3m")
    compiled = _compile(tmp_path, HEAD + 'import "lib.l3m" as lib\nimport "alias.l3m" as al\nlet x = lib.dim + al.dim\n')
    assert compiled.ok and compiled.program.lets["x"] == 16


# ----------------------------------------------------------------------------- no secrets from the environment


@pytest.mark.parametrize("name", ["MY_API_KEY", "HF_TOKEN", "aws_secret_access_key", "DB_PASSWORD", "PGPASSWD",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "AUTH", "OPENAI_APIKEY", "MONKEY",
                                  "TOKENIZER_TOKEN"])
def test_credential_like_names_are_recognised(name):
    assert secret_word(name)


@pytest.mark.parametrize("name", ["DATA_ROOT", "TEXT_JSONL", "VOCAB_FILE", "IMAGENET_ROOT", "HOME", "PWD", "USER",
                                  "TOKENIZER_PATH", "HF_TOKENIZERS_DIR"])
def test_ordinary_names_are_not(name):
    assert secret_word(name) is None


@pytest.mark.parametrize("text", ['"${MY_API_KEY}"', '"${MY_API_KEY:-fallback}"', '"run-${my_api_key}"'])
def test_a_secret_variable_is_an_error_at_its_column(tmp_path, monkeypatch, text):
    monkeypatch.setenv("MY_API_KEY", "supersecret")
    monkeypatch.setenv("my_api_key", "supersecret")
    compiled = _compile(tmp_path, HEAD + f"let name = {text}\n")
    (d,) = _errors(compiled, "E420")
    assert (d.span.line, d.span.col) == (2, 12 + text.index("$"))
    assert "supersecret" not in _all_output(compiled)
    assert "name" not in compiled.program.lets


def test_a_secret_variable_in_an_override_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "supersecret")
    compiled = _compile(tmp_path, HEAD + 'let name = "x"\n', overrides=["name=${MY_API_KEY}"])
    (d,) = _errors(compiled, "E420")
    assert (d.span.file, d.span.col) == ("<override 1>", 6)
    assert "supersecret" not in _all_output(compiled)


def test_lets_and_ordinary_variables_still_interpolate(tmp_path, monkeypatch):
    monkeypatch.setenv("L3M_TEST_DATA_ROOT", "/srv/data")
    compiled = _compile(tmp_path, HEAD + 'let api_key = "k"\nlet p = "${L3M_TEST_DATA_ROOT}/${api_key}"\n')
    assert compiled.ok and compiled.program.lets["p"] == "/srv/data/k"


TINY = HEAD + """data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train { steps = 1 }
log { name = "${MY_API_KEY:-anon}" }
"""


def test_a_secret_never_reaches_the_run_directory(tmp_path, monkeypatch, l3m):
    (tmp_path / "prog.l3m").write_text(TINY)
    monkeypatch.setenv("MY_API_KEY", "supersecret")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    r = l3m("train", "prog.l3m", "--output", tmp_path / "run")
    assert r.returncode == 1 and "error[E420]" in r.stderr
    assert "supersecret" not in r.stdout + r.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert b"supersecret" not in p.read_bytes(), p


# ----------------------------------------------------------------------------- bounded evaluation


@pytest.mark.parametrize("expr, code, needle", [
    ("[0] * 10 ** 9", "E430", "values are limited"),
    ("10 ** 10 ** 8", "E430", "1024 bits"),
    ("2 ** 1100", "E430", "1024 bits"),
    ("(2 ** 1000) * (2 ** 1000)", "E430", "1024 bits"),
    ("9" * 5000, "E430", "5,000 digits"),
    ("(-8) ** 0.5", "E404", "not a real number"),
    ("2.0 ** 100000", "E404", "too large"),
    ("[" * 500 + "]" * 500, "E004", "nest deeper"),
    ("(" * 5000 + "1" + ")" * 5000, "E004", "nest deeper"),
])
def test_unbounded_expressions_are_refused(tmp_path, expr, code, needle):
    compiled = _compile(tmp_path, HEAD + f"let x = {expr}\n")
    (d,) = _errors(compiled, code)
    assert needle in d.message and d.span.line == 2


def test_sharing_does_not_hide_size(tmp_path):
    src = HEAD + "let a = [0] * 1000000\nlet b = [a] * 1000000\nlet c = [a, a]\nlet d = a + a\n"
    compiled = _compile(tmp_path, src)
    assert sorted(d.span.line for d in _errors(compiled, "E430")) == [3, 4, 5]


def test_many_allowed_steps_are_bounded_in_all(tmp_path):
    src = HEAD + "let a = [0] * 900000\nlet b = a" + " + []" * 200 + "\n"
    (d,) = _errors(_compile(tmp_path, src), "E430")
    assert "in all" in d.message


def test_powers_within_the_limit_are_exact(tmp_path):
    compiled = _compile(tmp_path, HEAD + "let x = 2 ** 1000\nlet y = (-3) ** 3\nlet z = 2 ** -1\nlet w = 1 ** 10 ** 300\n")
    assert compiled.ok
    assert compiled.program.lets == {"x": 2**1000, "y": -27, "z": 0.5, "w": 1}


@pytest.mark.parametrize("n", [1000, 10000])
def test_long_sums_evaluate(tmp_path, n):
    compiled = _compile(tmp_path, HEAD + "let x = " + " + ".join(["1"] * n) + "\n", overrides=[
        "y=" + "+".join(["2"] * n)])
    assert not compiled.ok  # `y` is no let: the override names nothing ...
    assert [d.code for d in compiled.errors] == ["E501"]  # ... which is the only error
    assert compiled.program.lets["x"] == n
    compiled = _compile(tmp_path, HEAD + "let x = 0\n", overrides=["x=" + "+".join(["2"] * n)])
    assert compiled.ok and compiled.program.lets["x"] == 2 * n


@pytest.mark.parametrize("n", [500, 5000])
def test_long_chains_of_other_operators(tmp_path, n):
    src = HEAD + f"let neg = {'- ' * n}1\nlet pw = {' ** '.join(['1'] * n)}\nlet prod = {' * '.join(['1'] * n)}\n"
    compiled = _compile(tmp_path, src)
    assert compiled.ok, [d.message for d in compiled.errors]
    assert compiled.program.lets == {"neg": (-1) ** n, "pw": 1, "prod": 1}


def test_a_long_chain_of_lets_in_reverse_order(tmp_path):
    lines = [f"let a{i} = a{i + 1} + 1" for i in range(5000)] + ["let a5000 = 0"]
    compiled = _compile(tmp_path, HEAD + "\n".join(lines) + "\n")
    assert compiled.ok and compiled.program.lets["a0"] == 5000


def test_a_long_cycle_of_lets(tmp_path):
    lines = [f"let a{i} = a{(i + 1) % 3000} + 1" for i in range(3000)]
    compiled = _compile(tmp_path, HEAD + "\n".join(lines) + "\n")
    (d,) = _errors(compiled, "E404")
    assert "depends on itself" in d.message


def test_lists_nested_through_lets_are_bounded(tmp_path):
    lines = [f"let a{i} = [a{i + 1}]" for i in range(200)] + ["let a200 = 0"]
    (d, *_) = _errors(_compile(tmp_path, HEAD + "\n".join(lines) + "\n"), "E004")
    assert "deeper than 64" in d.message


def test_a_template_that_instantiates_itself(tmp_path):
    src = HEAD + "def A() x -> y { model m = A() x -> y }\nmodel top = A() a -> b\n"
    (d,) = _errors(_compile(tmp_path, src), "E004")
    assert "instantiate itself" in d.help


def test_the_cli_reports_instead_of_crashing(tmp_path, l3m):
    (tmp_path / "prog.l3m").write_text(HEAD + "let x = " + " + ".join(["1"] * 10000) + "\nlet y = [0] * 10 ** 9\n")
    r = l3m("lint", "prog.l3m", "--format", "json")
    assert r.returncode == 1 and "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert [(d["code"], d["line"], d["col"]) for d in json.loads(r.stdout)] == [("E430", 3, 9)]


def test_templates_that_fan_out_are_bounded(tmp_path, monkeypatch):
    models = importlib.import_module("l3m.dsl.resolver.models")  # where templates are expanded
    monkeypatch.setattr(models, "MAX_NODES", 100)  # the real bound (20,000) takes seconds to reach
    lines = ["def T0() x -> y { trunk { l: Linear(4, 4) x -> y } }"]
    lines += [f"def T{i}() x -> y {{ model a = T{i - 1}() x -> h\n model b = T{i - 1}() h -> y }}" for i in range(1, 31)]
    src = HEAD + "data { train: TextBytes(seq_len = 8, batch_size = 2) -> x, targets }\n" + "\n".join(lines)
    compiled = _compile(tmp_path, src + "\nmodel top = T30() x -> z\n")  # 2**30 nodes, unbounded
    (d,) = _errors(compiled, "E430")
    assert "more than 100 nodes" in d.message

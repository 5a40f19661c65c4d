"""No input makes the front end crash, hang or print a traceback: mutated copies of the shipped files."""

from __future__ import annotations

import json
import os
import random

from helpers import SHIPPED
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from l3m.dsl import compile_file
from l3m.dsl.diagnostics import CODES, render_text

TEXTS = [p.read_text() for p in SHIPPED]
ALPHABET = "{}()[],:=->!#\"$.*/+ \nabcxyz0123456789_"


def _mutate(text: str, seed: int, n: int) -> str:
    rng = random.Random(seed)
    chars = list(text)
    for _ in range(n):
        op = rng.randrange(4)
        i = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op == 1:
            chars.insert(i, rng.choice(ALPHABET))
        elif op == 2 and chars:
            j = rng.randrange(len(chars))
            chars[j] = rng.choice(ALPHABET)
        else:
            chars = chars[:i]  # truncate
    return "".join(chars)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(TEXTS) - 1), seed=st.integers(0, 2**31), n=st.integers(1, 12))
def test_mutated_files_give_diagnostics_not_crashes(tmp_path, which, seed, n):
    path = tmp_path / "fuzz.l3m"
    path.write_text(_mutate(TEXTS[which], seed, n))
    compiled = compile_file(str(path))  # must not raise
    for d in compiled.diagnostics:
        assert d.code and d.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "bytes.l3m"
    path.write_bytes(data)
    compile_file(str(path))


def test_a_50000_line_file(tmp_path):
    lines = ["l3m 1"] + [f"let v{i} = {i} * 2 + 1" for i in range(50000)]
    path = tmp_path / "big.l3m"
    path.write_text("\n".join(lines))
    compiled = compile_file(str(path))
    assert compiled.ok and compiled.program.lets["v49999"] == 99999


# ----------------------------------------------------------------------------- hostile input, generated
# Each generator is bounded by construction (sizes below), so no example can take long; what is asserted
# is that every one compiles to a value or to diagnostics with codes, never an exception.

_ATOMS = st.sampled_from(["1", "2", "0", "-3", "1.5", "[0]", "[[1, 2]]", '"ab"', "[]", "x", "(1)"])
_HUGE = st.integers(0, 10**12)


def _chain(ops: list[str], atoms: list[str]) -> str:
    return atoms[0] + "".join(f" {o} {a}" for o, a in zip(ops, atoms[1:]))


_EXPRS = st.one_of(
    st.integers(1, 6000).map(lambda n: "9" * n),  # huge literals
    st.tuples(_ATOMS, _HUGE).map(lambda t: f"{t[0]} * {t[1]}"),  # huge repetition
    st.tuples(st.integers(-10**6, 10**6), _HUGE).map(lambda t: f"({t[0]}) ** {t[1]}"),  # huge exponents
    st.tuples(st.integers(2, 10), st.integers(1, 12)).map(lambda t: " ** ".join([str(t[0])] * t[1])),
    st.tuples(st.sampled_from(["(", "["]), st.integers(1, 6000)).map(  # deep nesting
        lambda t: t[0] * t[1] + "1" + {"(": ")", "[": "]"}[t[0]] * t[1]),
    st.tuples(st.sampled_from(["+", "-", "*", "**", "//"]), st.integers(1, 12000)).map(  # long chains
        lambda t: f" {t[0]} ".join(["1"] * t[1])),
    st.integers(1, 6000).map(lambda n: "- " * n + "1"),
    st.tuples(st.lists(st.sampled_from(["+", "*", "-", "**"]), min_size=1, max_size=30), st.data()).map(
        lambda t: _chain(t[0], [t[1].draw(_ATOMS) for _ in range(len(t[0]) + 1)])),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exprs=st.lists(_EXPRS, min_size=1, max_size=3))
def test_hostile_expressions_give_diagnostics(tmp_path, exprs):
    lines = ["l3m 1", "let x = [1, 2]"] + [f"let v{i} = {e}" for i, e in enumerate(exprs)]
    lines.append("let all = [" + ", ".join(f"v{i}" for i in range(len(exprs))) + "]")
    path = tmp_path / "hostile.l3m"
    path.write_text("\n".join(lines) + "\n")
    compiled = compile_file(str(path))  # must not raise
    for d in compiled.errors:
        assert d.code in CODES and d.span is not None and d.span.line >= 2, (d.code, d.message)
    if compiled.ok:
        assert len(compiled.program.lets["all"]) == len(exprs)


_SPECIAL = ["/dev/zero", "/dev/null", "/dev/urandom", "/etc/passwd", "/etc/shadow", "/proc/self/environ", "/",
            "pipe.l3m", "dir.l3m", "zero.l3m", "secret.txt", "secret-link.l3m", "missing.l3m", "nul.l3m"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(targets=st.lists(st.sampled_from(_SPECIAL), min_size=1, max_size=4))
def test_imports_of_special_files_give_diagnostics(tmp_path, targets):
    if not (tmp_path / "pipe.l3m").exists():
        os.mkfifo(tmp_path / "pipe.l3m")
        (tmp_path / "dir.l3m").mkdir()
        (tmp_path / "zero.l3m").symlink_to("/dev/zero")
        (tmp_path / "secret.txt").write_text("hunter2-SECRET-LINE\n")
        (tmp_path / "secret-link.l3m").symlink_to(tmp_path / "secret.txt")
        (tmp_path / "nul.l3m").write_bytes(b"hunter2-SECRET-LINE\0")
    src = "l3m 1\n" + "".join(f'import "{t}" as m{i}\n' for i, t in enumerate(targets))
    path = tmp_path / "imports.l3m"
    path.write_text(src)
    compiled = compile_file(str(path))  # must not raise, block or read a device
    errors = compiled.errors
    assert len(errors) == len(targets)
    assert {d.code for d in errors} <= {"E401", "E410", "E411", "E412", "E413"}
    assert sorted(d.span.line for d in errors) == list(range(2, len(targets) + 2))
    shown = "\n".join(render_text(d, compiled.sources) for d in compiled.diagnostics)
    assert "hunter2" not in shown and "root:" not in shown


_WORDS = st.sampled_from(["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "AUTH"])
_PART = st.from_regex(r"[A-Za-z0-9_]{0,8}", fullmatch=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), word=_WORDS, suffix=_PART,
       lower=st.booleans(), default=st.booleans())
def test_credential_like_variables_are_never_read(tmp_path, prefix, word, suffix, lower, default):
    name = prefix + (word.lower() if lower else word) + suffix
    assume("TOKENIZER" not in name.upper())  # the one exempt word (l3m.dsl.limits.NOT_SECRET)
    os.environ[name] = "sentinel-value-42"
    try:
        text = "${" + name + (":-d" if default else "") + "}"
        path = tmp_path / "env.l3m"
        path.write_text(f'l3m 1\nlet s = "{text}"\n')
        compiled = compile_file(str(path))
    finally:
        del os.environ[name]
    (d,) = compiled.errors
    assert d.code == "E420" and (d.span.line, d.span.col) == (2, 10)
    assert "sentinel-value-42" not in render_text(d, compiled.sources) + json.dumps(d.to_json())
    assert "s" not in compiled.program.lets

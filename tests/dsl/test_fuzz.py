"""No input makes the front end crash, hang or print a traceback: mutated copies of the shipped files."""

from __future__ import annotations

import random

from helpers import SHIPPED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l3m.dsl import compile_file

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

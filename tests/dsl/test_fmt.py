"""`l3m fmt`: canonical, idempotent, comment-preserving, and never changes what a file compiles to."""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
from pathlib import Path

import pytest

from l3m.cli import main
from l3m.dsl import compile_file
from l3m.dsl.fmt import format_text
from l3m.dsl.ir import Span
from l3m.dsl.parser import ParseFailure, parse

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("models/*.l3m"), *ROOT.glob("examples/*.l3m")])


def _canon(obj, moved: tuple[str, str] = ("", "")):
    """A comparable value with every source position dropped (formatting moves them, nothing else);
    `moved` renames a folder in file names (the formatted copy lives elsewhere)."""
    if isinstance(obj, Span):
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__, tuple((f.name, _canon(getattr(obj, f.name), moved))
                                          for f in dataclasses.fields(obj)
                                          if not f.name.endswith("span") and not f.name.endswith("spans")))
    if isinstance(obj, dict):
        return tuple(sorted(((repr(k), _canon(v, moved)) for k, v in obj.items()), key=lambda kv: kv[0]))
    if isinstance(obj, (list, tuple)):
        return tuple(_canon(x, moved) for x in obj)
    if isinstance(obj, str) and moved[0]:
        return obj.replace(*moved)
    return obj


def _comments(text: str) -> list[str]:
    return re.findall(r"#[^\n]*", re.sub(r'"([^"\\\n]|\\.)*"', '""', text))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_files_idempotent_same_syntax_tree_and_comments(path):
    text = path.read_text()
    out = format_text(text, str(path))
    assert format_text(out, str(path)) == out
    assert _canon(parse(out, "f")) == _canon(parse(text, "f"))
    assert [c.rstrip() for c in _comments(out)] == [c.rstrip() for c in _comments(text)]
    assert not any(line != line.rstrip() for line in out.splitlines())


def test_shipped_files_compile_to_the_same_programs(tmp_path):
    """Format models/ and examples/ into a copy (imports are relative) and compare the resolved programs."""
    for sub in ("models", "examples"):
        shutil.copytree(ROOT / sub, tmp_path / sub)
    for path in SHIPPED:
        copy = tmp_path / path.parent.name / path.name
        copy.write_text(format_text(path.read_text(), str(path)))
    for path in SHIPPED:
        before = compile_file(str(path))
        after = compile_file(str(tmp_path / path.parent.name / path.name))
        assert [d.code for d in after.diagnostics] == [d.code for d in before.diagnostics], path
        assert _canon(after.program, (f"{tmp_path}/", "")) == _canon(before.program, (f"{ROOT}/", "")), path


def _scramble(text: str, rng: random.Random) -> str:
    """The same tokens and line breaks with other spacing (outside strings and comments)."""
    out = []
    for line in text.splitlines():
        parts = re.split(r'("(?:[^"\\\n]|\\.)*"|#.*)', line)
        for i, part in enumerate(parts):
            if i % 2 == 0:
                part = re.sub(r"[ \t]+", lambda _: " " * rng.randint(1, 3), part)
                part = re.sub(r"(?<=[(\[,=:])(?=\w)", lambda _: " " * rng.randint(0, 1), part)
            parts[i] = part
        out.append(" " * rng.randint(0, 6) + "".join(parts).lstrip())
    return "\n".join(out) + "\n" * rng.randint(1, 3)


@pytest.mark.parametrize("path", SHIPPED[:6], ids=lambda p: p.name)
def test_layout_depends_only_on_tokens_and_line_breaks(path):
    text = path.read_text()
    rng = random.Random(path.name)
    want = format_text(text)
    for _ in range(3):
        assert format_text(_scramble(text, rng)) == want


UGLY = """\
l3m 1
# header comment
let   d=64   # width
let depth_of_trunk =  2
let neg = - 3 * (d+1)//2


def Block(dim, heads=2) x -> y {
      trunk {
   a:Linear(dim,dim,bias=true) x->h   # first
      b_long_name : Linear(dim, dim,
   bias = false)   h -> y
   }
}

data {
 train: DigitsImages(split=train, image_size=16, batch_size=64)->image, label
}
model m = Block(dim=d) image -> y
loss ce: ClassificationCE() y, label -> loss weight 0.5
metric top1 : TopKAccuracy(k=1) y, label -> top1
optimizer AdamW(lr=1e-3,no_decay=["*bias"])
schedule WarmupCosine(warmup=0.1)
train {steps=10, dtype=fp32,
seed=0}
"""

CANONICAL = """\
l3m 1
# header comment
let d              = 64  # width
let depth_of_trunk = 2
let neg            = -3 * (d + 1) // 2

def Block(dim, heads = 2) x -> y {
  trunk {
    a:           Linear(dim, dim, bias = true)  x -> h  # first
    b_long_name: Linear(dim, dim,
                        bias = false)           h -> y
  }
}

data {
  train: DigitsImages(split = train, image_size = 16, batch_size = 64)  -> image, label
}
model m = Block(dim = d)  image -> y
loss   ce:   ClassificationCE()   y, label -> loss  weight 0.5
metric top1: TopKAccuracy(k = 1)  y, label -> top1
optimizer AdamW(lr = 1e-3, no_decay = ["*bias"])
schedule  WarmupCosine(warmup = 0.1)
train     { steps = 10, dtype = fp32,
            seed = 0 }
"""


def test_canonical_layout():
    assert format_text(UGLY) == CANONICAL
    assert format_text(CANONICAL) == CANONICAL


def test_syntax_error_raises_the_parse_diagnostic():
    with pytest.raises(ParseFailure) as e:
        format_text("l3m 1\nlet x = \n", "bad.l3m")
    assert e.value.diagnostic.code == "E001"


def test_cli_check_diff_write_and_errors(tmp_path, capsys):
    ugly, good = tmp_path / "ugly.l3m", tmp_path / "good.l3m"
    ugly.write_text(UGLY)
    good.write_text(CANONICAL)
    assert main(["fmt", "--check", str(good)]) == 0
    assert main(["fmt", str(ugly), "--check"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"--- {ugly}") and "+let d              = 64  # width" in out
    assert ugly.read_text() == UGLY  # --check writes nothing
    assert main(["fmt", "--diff", str(ugly)]) == 1 and ugly.read_text() == UGLY
    assert main(["fmt", str(tmp_path)]) == 0  # a folder: every .l3m under it
    assert ugly.read_text() == CANONICAL
    assert main(["fmt", "--check", str(ugly), str(good)]) == 0
    bad = tmp_path / "bad.l3m"
    bad.write_text("l3m 1\nlet x = \n")
    capsys.readouterr()
    assert main(["fmt", str(bad)]) == 1
    assert f"{bad}:2:" in capsys.readouterr().err and bad.read_text() == "l3m 1\nlet x = \n"
    assert main(["fmt", str(tmp_path / "missing.l3m")]) == 2


def _test_programs() -> list[str]:
    """Every string literal in the test suite that is a whole `.l3m` program that parses."""
    import ast as pyast

    found = []
    for f in sorted((ROOT / "tests").rglob("*.py")):
        for node in pyast.walk(pyast.parse(f.read_text())):
            if isinstance(node, pyast.Constant) and isinstance(node.value, str) and node.value.startswith("l3m 1"):
                try:
                    parse(node.value)
                except ParseFailure:
                    continue
                found.append(node.value)
    return found


def test_programs_in_the_test_suite_format_safely():
    programs = _test_programs()
    assert len(programs) >= 10
    for text in programs:
        out = format_text(text)
        assert format_text(out) == out
        assert _canon(parse(out)) == _canon(parse(text))
        assert [c.rstrip() for c in _comments(out)] == [c.rstrip() for c in _comments(text)]


def test_line_endings_blank_lines_and_trailing_blanks():
    text = "\r\n\r\nl3m 1   # version \r\n\r\n\r\n\r\nlet x=1\t# one  \r\n\r\n"
    assert format_text(text) == "l3m 1  # version\n\nlet x = 1  # one\n"


def test_mutated_programs_that_still_parse_format_safely():
    """Random edits of the shipped files (those that still parse): idempotent, same syntax tree."""
    from test_fuzz import TEXTS, _mutate

    checked = 0
    for seed in range(400):
        text = _mutate(TEXTS[seed % len(TEXTS)], seed, 1 + seed % 6)
        try:
            tree = parse(text)
        except ParseFailure:
            continue
        out = format_text(text)
        assert format_text(out) == out, seed
        assert _canon(parse(out)) == _canon(tree), seed
        checked += 1
    assert checked >= 50


def test_test_suite_programs_compile_to_the_same_programs(tmp_path):
    """Every whole program in the test suite, formatted: the same diagnostics (codes and messages) and the
    same resolved program (positions aside); formatting the result again changes nothing."""
    programs = _test_programs()
    assert len(programs) >= 10
    for k, text in enumerate(programs):
        out = format_text(text)
        assert format_text(out) == out
        before, after = tmp_path / f"p{k}.l3m", tmp_path / f"p{k}_fmt.l3m"
        before.write_text(text)
        after.write_text(out)
        a, b = compile_file(str(before)), compile_file(str(after))
        moved = (f"p{k}_fmt.l3m", f"p{k}.l3m")
        assert [(d.code, d.message.replace(*moved)) for d in b.diagnostics] == \
               [(d.code, d.message) for d in a.diagnostics], text[:200]
        assert _canon(b.program, moved) == _canon(a.program), text[:200]


def test_weights_and_own_line_bindings_align_with_their_run():
    text = """\
l3m 1
model m {
  trunk {
    a: Linear(3, 3) x -> h
    long_name: Transformer(dim = 3, depth = 2,
      heads = 1)
      h -> y
  }
}
loss a: X() p -> la weight 0.4
loss bb: LongerName(k = 1) q, r -> lbb weight 1.0
"""
    assert format_text(text) == """\
l3m 1
model m {
  trunk {
    a:         Linear(3, 3)  x -> h
    long_name: Transformer(dim = 3, depth = 2,
                           heads = 1)
                             h -> y
  }
}
loss a:  X()                p -> la      weight 0.4
loss bb: LongerName(k = 1)  q, r -> lbb  weight 1.0
"""

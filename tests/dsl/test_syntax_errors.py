"""Several syntax errors at once: each reported as E001 at its own line:col, no follow-on errors; and the
shared parser holds no per-call state (two files parsed from two threads keep their own file names)."""

from __future__ import annotations

import threading

import pytest
from helpers import SHIPPED

from l3m.dsl import compile_file, parser
from l3m.dsl.diagnostics import SourceCache, render_text
from l3m.dsl.parser import ParseFailure, parse
from l3m.dsl.recover import MAX_ERRORS

GOOD = """\
l3m 1
let d = 16

data {
  train: DigitsImages(split = train, image_size = 16, batch_size = 8)  -> image, label
}

model m {
  trunk {
    a: Linear(d, d)  image -> h
    b: Linear(d, d)  h -> y
  }
}

loss ce: ClassificationCE()  y, label -> loss
train { steps = 10, dtype = fp32 }
"""

# Independent mistakes in the data section, the model body and the settings:
# (line, original, broken, the line the error is reported at).
MISTAKES = [
    (5, "batch_size = 8)  -> image", "batch_size = 8  -> image", 5),  # a forgotten ')'
    (11, "Linear(d, d)  h -> y", "Linear(d d)  h -> y", 11),  # a forgotten ','
    (16, "steps = 10", "steps = = 10", 16),  # a doubled '='
    (8, "model m {", "modle m {", 8),  # a misspelled keyword
    (9, "trunk {", "trunk", 10),  # a forgotten '{' (found at the next token)
    (15, "loss ce:", "loss ce", 15),  # a forgotten ':'
]


def _break(*which: int) -> str:
    lines = GOOD.splitlines()
    for k in which:
        line, old, new, _ = MISTAKES[k]
        assert old in lines[line - 1]
        lines[line - 1] = lines[line - 1].replace(old, new)
    return "\n".join(lines) + "\n"


def _errors(text: str) -> list[tuple]:
    with pytest.raises(ParseFailure) as e:
        parse(text, "f.l3m")
    return [(d.code, d.span.line, d.span.col, d.span.end_col, d.message, d.help) for d in e.value.diagnostics]


def test_the_good_file_parses():
    parse(GOOD, "f.l3m")


@pytest.mark.parametrize("k", range(len(MISTAKES)))
def test_one_mistake_gives_one_error(k):
    (err,) = _errors(_break(k))
    assert err[0] == "E001" and err[1] == MISTAKES[k][3]


@pytest.mark.parametrize("which", [(0, 1, 2), (0, 2), (1, 2), (3, 1, 5), (4, 2), (0, 4, 5), (3, 4, 2)])
def test_each_independent_mistake_is_reported_once_as_when_alone(which):
    """The errors of a file with several mistakes are exactly the errors of each mistake alone."""
    alone = [e for k in which for e in _errors(_break(k))]
    together = _errors(_break(*which))
    assert together == sorted(alone, key=lambda e: (e[1], e[2]))


def test_rendered_with_carets_and_expected_tokens():
    with pytest.raises(ParseFailure) as e:
        parse(_break(0, 1, 2), "f.l3m")
    sources = SourceCache()
    sources.add("f.l3m", _break(0, 1, 2))
    out = [render_text(d, sources) for d in e.value.diagnostics]
    assert out[0].startswith("f.l3m:5:") and "expected one of" in out[0] and "')'" in out[0]
    assert out[1].startswith("f.l3m:11:17: error[E001]: unexpected name 'd'") and "','" in out[1]
    assert out[2].startswith("f.l3m:16:17: error[E001]: unexpected '='")
    assert all(o.splitlines()[3].strip().startswith("| ") and o.splitlines()[3].strip().endswith("^") for o in out)


def test_a_refused_character_and_a_syntax_error_elsewhere():
    text = GOOD.replace("let d = 16", "let d = 'x'").replace("steps = 10", "steps = 10,,")
    errs = _errors(text)
    assert [(e[1], e[2]) for e in errs] == [(2, 9), (16, 20)]
    assert errs[0][5] == "strings are written in double quotes"


def test_many_errors_are_capped_with_a_note():
    text = "l3m 1\n" + "".join(f"let v{i} = = {i}\n" for i in range(MAX_ERRORS + 10))
    with pytest.raises(ParseFailure) as e:
        parse(text, "f.l3m")
    diags = e.value.diagnostics
    assert len(diags) == MAX_ERRORS
    assert [d.span.line for d in diags] == list(range(2, MAX_ERRORS + 2))
    assert "stopped after 20 syntax errors" in diags[-1].notes[-1][0]


def test_compile_reports_every_syntax_error_and_nothing_else(tmp_path):
    path = tmp_path / "f.l3m"
    path.write_text(_break(0, 1, 2))
    compiled = compile_file(str(path))
    assert [(d.code, d.span.line) for d in compiled.diagnostics] == [("E001", 5), ("E001", 11), ("E001", 16)]
    assert compiled.program is None or not compiled.ok


def test_accelerated_and_pure_parsers_report_the_same_errors(monkeypatch):
    texts = [_break(0, 1, 2), _break(3, 4, 2), GOOD.replace("let d = 16", "let d = @ 16") + "train {"]

    def run():
        parser._parser.cache_clear()
        out = []
        for t in texts:
            with pytest.raises(ParseFailure) as e:
                parse(t, "f.l3m")
            out.append([(d.message, d.span, d.help) for d in e.value.diagnostics])
        return out

    fast = run()
    monkeypatch.setattr(parser, "ACCELERATED", False)
    pure = run()
    parser._parser.cache_clear()
    assert fast == pure and all(len(x) >= 2 for x in fast)


def test_files_parsed_from_two_threads_keep_their_own_file_names():
    """The parse callbacks name the file in every span; two threads parsing at once must not mix them."""
    texts = {p.name: p.read_text() for p in SHIPPED[:2]}
    assert len(texts) == 2
    failures: list[str] = []
    start = threading.Barrier(2)

    def work(name: str) -> None:
        start.wait()
        for _ in range(15):
            mod = parse(texts[name], name)
            files = {s.file for s in _spans(mod)}
            if files != {name}:
                failures.append(f"{name}: {files}")

    threads = [threading.Thread(target=work, args=(n,)) for n in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_a_parse_inside_a_parse_callback_keeps_the_outer_file(monkeypatch):
    """Re-entrant: a parse that starts while another is building its tree does not change the outer one's file."""
    inner_done: list = []
    original = parser._ToAst.data

    def data(self, items):
        if not inner_done:
            inner_done.append(None)
            inner_done[0] = parse("l3m 1\nlet z = 1\n", "inner.l3m")
        return original(self, items)

    monkeypatch.setattr(parser._ToAst, "data", data)
    parser._parser.cache_clear()
    try:
        mod = parse("l3m 1\nlet a = 1\ndata { train: X() -> a }\nlet b = 2\n", "outer.l3m")
    finally:
        monkeypatch.undo()
        parser._parser.cache_clear()
    assert inner_done and {s.file for s in _spans(mod)} == {"outer.l3m"} and len(mod.lets) == 2
    assert {s.file for s in _spans(inner_done[0])} == {"inner.l3m"}


def _spans(obj, seen=None):
    """Every Span reachable from an AST node."""
    import dataclasses

    from l3m.dsl.ir import Span

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Span):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _spans(getattr(obj, f.name), seen)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _spans(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _spans(x, seen)


def test_independent_mistakes_in_the_shipped_files():
    """Three typical mistakes (a dropped bracket, comma, colon, `=` or `->`; a doubled `=`) on lines of a
    shipped file at least three lines apart: the errors are those of each mistake alone, nearly always
    (two mistakes can interact, e.g. two dropped braces)."""
    import random
    import re

    def mistakes(code: str) -> list[str]:
        drops = [code[:m.start()] + code[m.end():] for m in re.finditer(r"[(){},=:]|->", code)]
        return drops + [code[:m.start()] + "= " + code[m.start():] for m in re.finditer(r"=", code)]

    def errors(lines: list[str]) -> list[tuple] | None:
        try:
            parse("\n".join(lines) + "\n", "f.l3m")
        except ParseFailure as e:
            return [(d.span.line, d.span.col, d.message) for d in e.diagnostics]
        return None

    texts = [p.read_text().splitlines() for p in SHIPPED]
    same = cases = 0
    for seed in range(120):
        if cases == 25:
            break
        rng = random.Random(seed)
        lines = texts[seed % len(texts)]
        code = [i for i, line in enumerate(lines) if mistakes(line.split("#")[0]) and not line.lstrip().startswith("#")]
        picks = sorted(rng.sample(code, 3))
        if min(b - a for a, b in zip(picks, picks[1:])) < 3:
            continue
        broken, alone = list(lines), []
        for i in picks:
            one = list(lines)
            one[i] = broken[i] = rng.choice(mistakes(lines[i].split("#")[0]))
            alone.append(errors(one))
        if any(a is None or len(a) != 1 for a in alone):  # still valid, or not one clean error alone
            continue
        cases += 1
        same += errors(broken) == sorted(a[0] for a in alone)
    assert cases == 25 and same >= 22, (same, cases)

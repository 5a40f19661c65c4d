"""The front end's per-entry caches (issue #16, LSP latency) answer exactly what the uncached code did."""

from __future__ import annotations

import inspect

import pytest

from l3m.dsl import parser, sigparams
from l3m.dsl.limits import MAX_DEPTH
from l3m.dsl.parser import ParseFailure
from l3m.dsl.shapes import engine, params
from l3m.dsl.shapes.spec import eval_check


def _f(a, b=2, /, c=3, *rest, d, e=None, **kw):  # every kind of parameter
    return a


def test_signature_answers_and_fresh_defaults():
    sig = inspect.signature(_f)
    assert sigparams.named_names(sig) == ("a", "b", "c", "d", "e")
    assert sigparams.positional_names(sig) == ("a", "b", "c")
    first = sigparams.defaults(sig)
    assert first == {"b": 2, "c": 3, "e": None}
    first["b"] = 99  # a caller fills the dict in: the next caller must not see it
    assert sigparams.defaults(sig)["b"] == 2


def _slow_depth(text: str) -> int:
    """`_check_depth`'s character walk, returning the deepest nesting."""
    depth = deepest = 0
    in_str = in_comment = False
    prev = ""
    for ch in text:
        if ch == "\n":
            in_comment = False
        elif in_comment:
            pass
        elif in_str:
            if ch == '"' and prev != "\\":
                in_str = False
        elif ch == "#":
            in_comment = True
        elif ch == '"':
            in_str = True
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(0, depth - 1)
        prev = ch if prev != "\\" else ""
    return deepest


@pytest.mark.parametrize("text", ['f((x))', '"((("(', '"a\\"(" (', '"a\\\\" (', '# (((\n(', ')))(((', '"\n(\n" [',
                                  '\\"(', '"unterminated ((( ', 'a\\\\"b" ((', ''])
def test_fast_depth_matches_the_walk(text):
    assert parser._max_depth(text) == _slow_depth(text)


def test_too_deep_still_reported_where_it_goes_too_deep():
    text = "let x = " + "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1) + "\n"
    with pytest.raises(ParseFailure) as e:
        parser.parse(text, "f.l3m")
    d = e.value.diagnostic
    assert d.code == "E004" and (d.span.line, d.span.col) == (1, len("let x = ") + MAX_DEPTH + 1)


@pytest.mark.parametrize("values", [{"dim": 64, "heads": 4}, {"dim": 64, "heads": 5}, {"dim": 64},
                                    {"dim": 64, "heads": True}, {"dim": 64, "heads": 1}, {"dim": "a", "heads": 2},
                                    {"dim": 64, "heads": [4]}])
def test_remembered_checks_answer_like_eval_check(values):
    for expr in ("dim % heads == 0", "heads == 1", "len([dim, heads]) == 2"):
        for _ in range(2):  # the second answer comes from the memo
            assert engine._eval_check(expr, values) == eval_check(expr, values)


def test_remembered_static_params_are_not_shared():
    args = {"dim": 64, "depth": 2, "heads": 4}
    first = params.static_params("Transformer", args)
    assert first, "Transformer's parameters are known statically"
    first.clear()  # a caller changing its list must not change the next answer
    again = params.static_params("Transformer", args)
    assert again and again == params.static_params("Transformer", dict(args))
    assert params.static_params("Transformer", {**args, "dim": 128}) != again

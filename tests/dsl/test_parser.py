"""The grammar: what parses, what it becomes, and syntax errors in words."""

from __future__ import annotations

import pytest
from helpers import SHIPPED

from l3m.dsl import ast
from l3m.dsl.parser import ParseFailure, parse


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_file_parses(path):
    mod = parse(path.read_text(), str(path))
    assert mod.version == 1
    assert mod.models, "every shipped file declares a model"


def test_structure_and_spans():
    src = """l3m 1
let dim = 64 * 2 // 4
model gpt {
  trunk { blocks: Transformer(dim = dim, depth = 2) (x = tokens, mask = m) -> x, !y }
}
loss ce: LMCrossEntropy() logits, targets -> loss weight 0.5
"""
    mod = parse(src, "f.l3m")
    (let,) = mod.lets
    assert isinstance(let.value, ast.BinOp) and let.value.op == "//"
    node = mod.models[0].stages[0].nodes[0]
    assert (node.name, node.span.line, node.span.col) == ("blocks", 4, 11)
    assert [(r.port, r.key) for r in node.reads] == [("x", "tokens"), ("mask", "m")]
    assert [(w.key, w.overwrite) for w in node.writes] == [("x", False), ("y", True)]
    assert mod.losses[0].weight.value == 0.5


def test_keywords_are_names_where_unambiguous():
    src = """l3m 1
data { train: X() -> loss, model, head, weight }
model m { head { train: Y() loss -> log } }
"""
    mod = parse(src)
    assert [w.key for w in mod.data[0].writes] == ["loss", "model", "head", "weight"]
    assert mod.models[0].stages[0].nodes[0].name == "train"


def test_strings_and_numbers():
    mod = parse('l3m 1\nlet a = "q\\"x\\n"\nlet b = 1_000\nlet c = 3e-4\nlet d = .5\nlet e = [1, 2.0, "s", true, null,]')
    vals = {let.name: let.value for let in mod.lets}
    assert vals["a"].raw == 'q"x\n'
    assert vals["b"].value == 1000 and vals["c"].value == 3e-4 and vals["d"].value == 0.5
    assert [getattr(i, "value", None) for i in vals["e"].items] == [1, 2.0, None, True, None]


@pytest.mark.parametrize(
    "src, expect",
    [
        ("l3m 1\nmodel m { trunk { a: X() x y } }", "expected one of ',', '->'"),
        ("model m {}", "expected 'l3m'"),
        ("l3m 1\nmodel m { trunkk { } }", "unexpected name 'trunkk'"),
        ("l3m 1\nlet x = 'a'", "unexpected character"),
        ("l3m 1\nlet x = ", "unexpected end of file"),
        ("l3m 1\nlet = 3", "expected a name"),
    ],
)
def test_syntax_errors_are_in_words(src, expect):
    with pytest.raises(ParseFailure) as e:
        parse(src, "f.l3m")
    d = e.value.diagnostic
    assert d.code == "E001"
    assert expect in d.message
    for internal in ("__ANON", "NAME", "LBRACE", "RPAR", "$END", "COMMA"):
        assert internal not in d.message


def test_typo_of_a_keyword_gets_a_suggestion():
    with pytest.raises(ParseFailure) as e:
        parse("l3m 1\nmodel m { trunkk { } }", "f.l3m")
    assert e.value.diagnostic.help == "did you mean 'trunk'?"


def test_deep_nesting_is_refused_cleanly():
    with pytest.raises(ParseFailure) as e:
        parse("l3m 1\nlet a = " + "(" * 500 + "1" + ")" * 500, "f.l3m")
    assert e.value.diagnostic.code == "E004"


def test_long_expression_chain_does_not_crash():
    try:
        parse("l3m 1\nlet a = " + "+".join(["1"] * 20000), "f.l3m")
    except ParseFailure as e:
        assert e.diagnostic.code == "E004"


def test_accelerated_and_pure_parsers_agree(monkeypatch):
    """lark-cython (when installed) must build exactly the AST and the errors that pure Lark builds."""
    from l3m.dsl import parser

    bad = ["l3m 1\nmodel m { trunk { a: X() x y } }", "l3m 1\nlet x = ", "l3m 1\nlet x = 'a'"]

    def run():
        parser._parser.cache_clear()
        asts = [parser.parse(p.read_text(), str(p)) for p in SHIPPED]
        errors = []
        for src in bad:
            with pytest.raises(ParseFailure) as e:
                parser.parse(src, "f.l3m")
            d = e.value.diagnostic
            errors.append((d.message, d.span, d.help))
        return asts, errors

    fast = run()
    monkeypatch.setattr(parser, "ACCELERATED", False)
    pure = run()
    parser._parser.cache_clear()
    assert fast == pure

"""Highlighting: the Pygments lexer (entry point `l3m`) and the VS Code TextMate grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

pygments = pytest.importorskip("pygments")
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename  # noqa: E402
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, String  # noqa: E402

from l3m.editors.pygments_lexer import L3mLexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("models/*.l3m"), *ROOT.glob("examples/*.l3m")])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_error_tokens_on_shipped_files(path):
    text = path.read_text()
    tokens = list(L3mLexer().get_tokens(text))
    assert not [v for t, v in tokens if t in Error]
    assert "".join(v for _, v in tokens) == (text if text.endswith("\n") else text + "\n")


def test_token_classes():
    text = ('l3m 1\n# a comment\nlet dim = 64\nimport "lib.l3m" as lib\n'
            'def T(dim, depth = 2) x -> y {\n  trunk { b: Transformer(dim = dim, eps = 1e-5, causal = true)  x -> y }\n}\n'
            'data { train: Digits(path = "${DATA:-/tmp}") -> image, label }\n'
            'loss ce: ClassificationCE() y, label -> loss weight 0.5\n'
            'train { steps = 10 }\n')
    got = {}
    for t, v in L3mLexer().get_tokens(text):
        got.setdefault(v, t)
    assert got["# a comment"] in Comment
    assert got["let"] in Keyword and got["def"] in Keyword and got["import"] in Keyword
    assert got["loss"] in Keyword and got["weight"] in Keyword and got["trunk"] in Keyword
    assert got["true"] in Keyword.Constant
    assert got["64"] in Number.Integer and got["1e-5"] in Number.Float and got["0.5"] in Number.Float
    assert got['"'] in String and got["${DATA:-/tmp}"] in String.Interpol
    assert got["Transformer"] is Name.Class and got["ClassificationCE"] is Name.Class
    assert got["T"] is Name.Function and got["b"] is Name.Label and got["ce"] is Name.Label
    assert got["->"] in Operator
    # `train {` is a settings section; `train:` in `data { }` is a source's name
    both = [t for t, v in L3mLexer().get_tokens("data { train: X() -> a }\ntrain { steps = 1 }\n") if v == "train"]
    assert both == [Name.Label, Keyword.Reserved]


def test_registered_under_the_name_l3m():
    """The `pygments.lexers` entry point (after `pip install -e .`): docs tools find it by name and suffix."""
    assert get_lexer_by_name("l3m").name == "l3m"
    assert get_lexer_for_filename("models/llm.l3m").name == "l3m"
    assert L3mLexer.analyse_text(SHIPPED[0].read_text()) == 1.0  # its `l3m 1` first line, for guess_lexer
    assert L3mLexer.analyse_text("import os\n") == 0.0


def test_no_error_tokens_on_test_programs_and_documentation_snippets():
    """Every whole program in the test suite that parses, and every ```l3m block of the Markdown docs."""
    import re

    from test_fmt import _test_programs

    texts = _test_programs()
    assert len(texts) >= 10
    for md in sorted(ROOT.glob("**/*.md")):
        if not {".venv", "runs", "node_modules"} & set(md.relative_to(ROOT).parts):
            texts += re.findall(r"```l3m\n(.*?)```", md.read_text(), re.S)
    for text in texts:
        assert not [v for t, v in L3mLexer().get_tokens(text) if t in Error], text[:120]


GRAMMAR = ROOT / "editors/vscode/syntaxes/l3m.tmLanguage.json"


def _rules(grammar: dict) -> list[dict]:
    out = []
    for rule in grammar["patterns"]:
        if "include" in rule:
            inc = grammar["repository"][rule["include"].lstrip("#")]
            out += [inc] if "match" in inc or "begin" in inc else inc["patterns"]
        else:
            out.append(rule)
    return out


def _uncovered(line: str, rules: list[dict]) -> str:
    """What a TextMate-style scan (earliest match wins, ties by order) leaves without a scope on one line."""
    import re

    compiled = [(re.compile(r.get("match") or r["begin"]), re.compile(r["end"]) if "begin" in r else None)
                for r in rules]
    pos, left = 0, []
    while pos < len(line):
        best = None
        for start_re, end_re in compiled:
            m = start_re.search(line, pos)
            if m and m.end() > m.start() and (best is None or m.start() < best[0].start()):
                best = (m, end_re)
        if best is None:
            left.append(line[pos:])
            break
        m, end_re = best
        left.append(line[pos:m.start()])
        pos = m.end()
        if end_re is not None:  # a string: runs to its closing quote or the line's end
            e = end_re.search(line, pos)
            pos = e.end() if e and e.end() > pos else len(line)
    return "".join(left)


def test_textmate_grammar_loads_and_scopes_every_character_of_the_shipped_files():
    import json
    import re

    grammar = json.loads(GRAMMAR.read_text())
    assert grammar["scopeName"] == "source.l3m"
    rules = _rules(grammar)
    for r in rules:  # every regex is also valid Python (the subset both engines share)
        for key in ("match", "begin", "end"):
            if key in r:
                re.compile(r[key])
    pkg = json.loads((GRAMMAR.parents[1] / "package.json").read_text())
    assert pkg["contributes"]["grammars"][0]["scopeName"] == grammar["scopeName"]
    conf = json.loads((GRAMMAR.parents[1] / "language-configuration.json").read_text())
    assert conf["comments"]["lineComment"] == "#"
    for path in SHIPPED:
        for line in path.read_text().splitlines():
            assert _uncovered(line, rules).strip() == "", (path, line)

"""Components as argument values (`attn = LAttention(pos = LRope())`): parsed as expressions anywhere,
resolved against the parameter's interface with the same binding as top-level calls, nested, and shown
by every consumer of arguments (plan, graph, JSON)."""

from __future__ import annotations

import json

import pytest
from components_toys import HEAD, registered

from l3m.dsl import ast
from l3m.dsl.ir import Call, to_data
from l3m.dsl.parser import parse, parse_expr


@pytest.fixture(autouse=True)
def toys():
    with registered():
        yield


def prog(stack_args: str, extra: str = "") -> str:
    return HEAD + extra + "model m {\n  trunk {\n    s: LStack(" + stack_args + ") x -> y\n  }\n}\n"


def node(c, path):
    return next(n for n in c.program.nodes if n.path == path)


def errors(c):
    return [(d.code, d.span.line, d.span.col, d.message) for d in c.diagnostics if d.is_error]


def test_call_is_an_expression_atom_nested_in_lets_lists_and_overrides():
    m = parse("l3m 1\nlet a = LAttention(pos = LRope(base = 1.0), window = [LNorm()])\n")
    value = m.lets[0].value
    assert isinstance(value, ast.CallExpr) and value.dotted == "LAttention"
    pos = value.args[0].value
    assert isinstance(pos, ast.CallExpr) and pos.dotted == "LRope" and pos.args[0].name == "base"
    assert isinstance(value.args[1].value.items[0], ast.CallExpr)
    assert ast.source_text(value) == "LAttention(pos = LRope(base = 1.0), window = [LNorm()])"
    assert isinstance(parse_expr("LRope2d(grid = 4)"), ast.CallExpr)
    assert parse("l3m 1\nlet default = 3\n").lets[0].name == "default"  # still a name where one fits


def test_nested_components_resolve_to_calls(compile_text):
    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope2d(grid = 4), dropout = 0.1), norm = LNorm()"))
    assert c.ok, errors(c)
    call = node(c, "m.trunk.s").call
    attn = call.kwargs["attn"]
    assert isinstance(attn, Call) and attn.type_name == "LAttention"
    assert attn.kwargs["dropout"] == 0.1
    assert isinstance(attn.kwargs["pos"], Call) and attn.kwargs["pos"].kwargs == {"grid": 4}
    assert str(call.kwargs["norm"]) == "LNorm()"
    assert attn.origins["pos"].kind == "argument" and attn.origins["pos"].span.line == 5
    # what the program records is plain data
    data = to_data(call.kwargs)
    assert json.loads(json.dumps(data))["attn"] == {"type": "LAttention", "kwargs": {
        "pos": {"type": "LRope2d", "kwargs": {"grid": 4}}, "dropout": 0.1}}


def test_use_defaults_are_materialised(compile_text):
    c = compile_text(prog("dim = 64"))
    assert c.ok, errors(c)
    call = node(c, "m.trunk.s").call
    assert str(call.kwargs["attn"]) == "LAttention()"
    assert call.origins["attn"].kind == "use" and "LStack.attn" in str(call.origins["attn"])
    assert "norm" not in call.kwargs  # a plain signature default stays the constructor's


def test_a_let_may_hold_a_component(compile_text):
    c = compile_text(prog("dim = 64, attn = a", extra="let a = LAttention(pos = LRope(base = 5.0))\n"))
    assert c.ok, errors(c)
    assert str(node(c, "m.trunk.s").call.kwargs["attn"]) == "LAttention(pos=LRope(base=5.0))"
    assert c.program.lets["a"] == "LAttention(pos = LRope(base = 5.0))"


def test_positional_component_arguments_start_after_what_the_host_supplies(compile_text):
    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope(5.0))"))  # head_dim comes from the host
    assert not errors(c)
    assert str(node(c, "m.trunk.s").call.kwargs["attn"]) == "LAttention(pos=LRope(base=5.0))"


# Each nested mistake is reported like its top-level twin, at the nested argument.
@pytest.mark.parametrize("args,code,col,words", [
    ("dim = 64, attn = LAttention(pos = LRpe())", "E201", 49, "unknown component 'LRpe'"),
    ("dim = 64, attn = LAttention(pos = LNorm())", "E205", 49, "must be a Positional component, not 'LNorm'"),
    ("dim = 64, norm = LRope()", "E205", 32, "must be a Norm component, not 'LRope'"),
    ("dim = 64, act = LNorm()", "E205", 31, "takes no component"),
    ("dim = 64, depth = LNorm()", "E205", 33, "not the component 'LNorm(...)'"),
    ("dim = 64, attn = LAttention(dropot = 0.1)", "E203", 43, "'LAttention' has no argument 'dropot'"),
    ("dim = 64, attn = LAttention(dropout = \"x\")", "E205", 53, "argument 'dropout' of 'LAttention' must be"),
    ("dim = 64, attn = LAttention(dropout = 0.1, dropout = 0.2)", "E207", 58, "given twice"),
    ("dim = 64, attn = LAttention(pos = LRope(1, 2))", "E206", 58, "'LRope' takes 1 positional argument, 2"),
    ("dim = 64, attn = LAttention(pos = LRope(base = LRope()))", "E205", 62, "takes no component"),
    ("dim = 64, attn = lib.Block()", "E202", 32, "is a template"),
])
def test_nested_errors_point_at_the_nested_argument(compile_text, args, code, col, words):
    c = compile_text(prog(args))
    found = [e for e in errors(c) if e[0] == code]
    assert found, errors(c)
    assert found[0][1:3] == (5, col), found
    assert words in found[0][3]


def test_unknown_component_suggests_among_those_that_fit(compile_text):
    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope2e())"))
    d = next(d for d in c.diagnostics if d.code == "E201")
    assert d.help == "did you mean 'LRope2d'?"
    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope2d)"))  # the parentheses forgotten
    d = next(d for d in c.diagnostics if d.code == "E403")
    assert d.help == "a component is a call: write `LRope2d()`"
    c = compile_text(prog("dim = 64, norm = LRope()"))
    d = next(d for d in c.diagnostics if d.code == "E205")
    assert "LNorm" in d.help and "LRope" not in d.help


def test_interface_supplied_arguments_are_not_required_others_are(compile_text):
    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope())"))  # dim, heads, head_dim: the host's
    assert c.ok, errors(c)
    c = compile_text(prog("attn = LAttention()"))  # the block's own `dim` is still required
    assert [e[0] for e in errors(c)] == ["E204"]


def test_command_line_overrides_reach_components(compile_text):
    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope())"),
                     overrides=["m.trunk.s.attn.pos.base=3.0", "m.trunk.s.norm=LNorm(eps = 0.5)"])
    assert c.ok, errors(c)
    call = node(c, "m.trunk.s").call
    assert str(call) == "LStack(dim=64, attn=LAttention(pos=LRope(base=3.0)), norm=LNorm(eps=0.5))"
    assert call.kwargs["attn"].kwargs["pos"].origins["base"].kind == "command line"
    c = compile_text(prog("dim = 64"), overrides=["m.trunk.s.attn=LAttention(pos = LRpe())"])
    assert [e[0] for e in errors(c)] == ["E201"]


def test_graph_and_plan_show_configured_components(compile_text):
    from l3m.dsl.render import key_args

    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope2d())"))
    assert "attn=LAttention(pos=LRope2d())" in key_args(node(c, "m.trunk.s"))
    c = compile_text(prog("dim = 64"))  # a bare materialised default is not shown
    assert "attn" not in key_args(node(c, "m.trunk.s"))


def test_shape_rules_see_components_as_dicts(compile_text):
    from l3m.dsl.sigparams import ComponentArgs, component_args

    c = compile_text(prog("dim = 64, attn = LAttention(pos = LRope2d(grid = 4))"))
    args = component_args(node(c, "m.trunk.s").call.kwargs["attn"])
    assert isinstance(args, ComponentArgs) and args.name == "LAttention"
    assert args["dropout"] == 0.0 and args["pos"].name == "LRope2d" and args["pos"]["grid"] == 4


def test_fmt_keeps_nested_calls_and_their_meaning(compile_text, tmp_path):
    from l3m.dsl.fmt import format_text

    text = prog("dim=64, attn=LAttention( pos=LRope2d(grid=4),\n        dropout = 0.1), norm = LNorm( )") + \
        "default   LAttention(pos=LRope())\n"
    out = format_text(text)
    assert "attn = LAttention(pos = LRope2d(grid = 4),\n" in out
    assert "default LAttention(pos = LRope())\n" in out
    assert format_text(out) == out
    a, b = compile_text(text), compile_text(out, name="formatted.l3m")
    assert a.ok and b.ok
    assert str(node(a, "m.trunk.s").call) == str(node(b, "m.trunk.s").call)


def test_editor_hover_and_completion_know_nested_components():
    pytest.importorskip("lsprotocol")
    from l3m.lsp.completion import complete
    from l3m.lsp.documents import Document
    from l3m.lsp.hover import hover
    from l3m.lsp.positions import Pos

    text = ("l3m 1\ndata { train: Synthetic() -> x, target }\n"
            "model m { trunk { s: LStack(dim = 64, attn = LAttention(pos = LRope(base = 2.0))) x -> y } }\n"
            "default LAttention(dropout = 0.1)\n")
    doc = Document("file:///x/c.l3m", "/tmp/lsp-components.l3m", text)
    doc.compile()
    line = text.split("\n")[2]
    h = hover(doc, Pos(2, line.index("LRope(") + 1)).contents.value
    assert "A toy 1-D position encoding." in h
    h = hover(doc, Pos(2, line.index("base") + 1)).contents.value
    assert "base" in h and "float" in h
    h = hover(doc, Pos(3, len("default LAttention(d"))).contents.value
    assert "dropout" in h
    typing_ = "l3m 1\nmodel m { trunk { s: LStack(dim = 64, attn = LAttention(pos = "
    doc = Document("file:///x/d.l3m", "/tmp/lsp-components2.l3m", typing_)
    labels = {i.label for i in complete(doc, Pos(1, len(typing_.split("\n")[1]))).items}
    assert {"LRope", "LRope2d"} <= labels and "LNorm" not in labels
    typing_ = "l3m 1\nmodel m { trunk { s: LStack(dim = 64, attn = LAttention(pos = LRope(b"
    doc = Document("file:///x/e.l3m", "/tmp/lsp-components3.l3m", typing_)
    labels = {i.label for i in complete(doc, Pos(1, len(typing_.split("\n")[1]))).items}
    assert "base" in labels and "dropout" not in labels


def test_interfaces_and_use_defaults_survive_the_manifest():
    import typing

    from l3m.interfaces import AttentionLayer, Norm, Use, use
    from l3m.registry_static import decode_value, encode_value, hint_to_text, manifest_entries, text_to_hint

    for hint in (AttentionLayer | None, Norm | typing.Literal["layernorm", "rmsnorm"]):
        assert text_to_hint(hint_to_text(hint)) == hint
    assert hint_to_text(AttentionLayer | None) == "AttentionLayer | None"
    default = use("Attention", heads=4, pos=use("Rope2d"))
    assert decode_value(encode_value(default)) == default
    by_name = {e.name: e for e in manifest_entries()}
    if "Transformer" not in by_name or "Rope2d" not in by_name:
        pytest.skip("the model components are not registered yet")
    attn = by_name["Transformer"].signature.parameters["attn"]
    assert isinstance(attn.default, Use) and attn.default.name == "Attention"
    assert AttentionLayer in typing.get_args(by_name["Transformer"].type_hints["attn"])
    assert by_name["Rope2d"].kind == "component" and by_name["Rope2d"].interfaces == ("Positional",)
    assert "AttentionLayer" in by_name["Attention"].interfaces


def test_extension_components_are_read_from_source(compile_text, tmp_path, monkeypatch):
    (tmp_path / "l_ext_components.py").write_text(
        "from l3m import register\nfrom l3m.interfaces import Positional, AttentionLayer, use\n\n"
        "@register(\"component\")\nclass XRope(Positional):\n    def __init__(self, head_dim: int, base: float = 1.0):\n"
        "        pass\n\n"
        "@register(\"block\")\nclass XStack:\n    outputs = (\"x\",)\n"
        "    def __init__(self, dim: int, attn: AttentionLayer | None = use(\"LAttention\", dropout=0.5)):\n"
        "        pass\n    def forward(self, x):\n        return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = HEAD.replace("data", 'extension "l_ext_components"\ndata') + \
        "model m { trunk { s: XStack(dim = 8) x -> y } }\ndefault LAttention(pos = XRope(base = 2.0))\n"
    c = compile_text(text)
    assert c.ok, errors(c)
    assert str(node(c, "m.trunk.s").call.kwargs["attn"]) == "LAttention(dropout=0.5, pos=XRope(base=2.0))"
    c = compile_text(text.replace("XRope(base", "XRope(bse"))
    assert [e[0] for e in errors(c)] == ["E203"]

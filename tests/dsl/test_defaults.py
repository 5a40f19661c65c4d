"""`default NAME(args)` statements and `default.NAME.arg=VALUE` on the command line: scope (the file and
what it imports), precedence, the checks of each statement, and `plan --why`."""

from __future__ import annotations

import contextlib
import io

import pytest
from components_toys import HEAD, registered


@pytest.fixture(autouse=True)
def toys():
    with registered():
        yield


def node(c, path):
    return next(n for n in c.program.nodes if n.path == path)


def errors(c):
    return [(d.code, d.span.line, d.span.col, d.message) for d in c.diagnostics if d.is_error]


MAIN = HEAD + """import "lib.l3m" as lib
model m {
  trunk {
    s: LStack(dim = 64) x -> y
    t: LStack(dim = 64, depth = 3, attn = LAttention(dropout = 0.5)) y -> z
  }
  model inner = lib.Block(d = 32) z -> w
}
"""

LIB = """l3m 1
def Block(d) x -> z {
  trunk { b: LStack(dim = d) x -> z }
}
default LAttention(pos = LRope(), dropout = 0.25)
default LStack(depth = 7)
"""


def test_a_default_reaches_every_call_nested_and_materialised(compile_text):
    c = compile_text(MAIN + "default LAttention(pos = LRope2d(grid = 4))\ndefault LRope2d(base = 7.0)\n",
                     **{"lib.l3m": LIB})
    assert c.ok, errors(c)
    s, t, b = (node(c, p).call for p in ("m.trunk.s", "m.trunk.t", "m.inner.trunk.b"))
    assert str(s.kwargs["attn"]) == "LAttention(pos=LRope2d(grid=4, base=7.0))"  # materialised `use`, nested
    assert str(t.kwargs["attn"]) == "LAttention(dropout=0.5, pos=LRope2d(grid=4, base=7.0))"  # written wins
    # in the imported template: the main file's default wins over the library's; the library's own
    # defaults reach its calls, not the main file's
    assert str(b.kwargs["attn"]) == "LAttention(pos=LRope2d(grid=4, base=7.0), dropout=0.25)"
    assert b.kwargs["depth"] == 7 and "depth" not in s.kwargs and t.kwargs["depth"] == 3
    origin = s.kwargs["attn"].origins["pos"]
    assert origin.kind == "default" and origin.span.line == 11


def test_precedence_command_line_then_call_then_default(compile_text):
    text = MAIN + "default LStack(depth = 5)\n"
    c = compile_text(text, overrides=["m.trunk.t.depth=9", "default.LStack.depth=4",
                                      "default.LAttention.dropout=0.75"], **{"lib.l3m": LIB})
    assert c.ok, errors(c)
    assert node(c, "m.trunk.t").call.kwargs["depth"] == 9  # a path override beats the written argument
    assert node(c, "m.trunk.s").call.kwargs["depth"] == 4  # `default.` on the command line beats the file's
    assert node(c, "m.inner.trunk.b").call.kwargs["depth"] == 4  # ... and the library's
    assert node(c, "m.trunk.t").call.kwargs["attn"].kwargs["dropout"] == 0.5  # written beats any default
    assert node(c, "m.trunk.s").call.kwargs["attn"].kwargs["dropout"] == 0.75
    assert node(c, "m.trunk.s").call.origins["depth"].kind == "command line"


@pytest.mark.parametrize("line,code,col,words", [
    ("default LAtention(dropout = 0.1)", "E201", 9, "unknown name 'LAtention'"),
    ("default Block(d = 1)", "E202", 9, "is a template"),
    ("default lib.Block(d = 1)", "E202", 9, "is a template"),
    ("default LStack(dept = 1)", "E203", 16, "'LStack' has no argument 'dept'"),
    ("default LStack(depth = \"x\")", "E205", 24, "must be an integer, not a string"),
    ("default LStack(act = LNorm())", "E205", 22, "takes no component"),
    ("default LStack(depth = 1, depth = 2)", "E207", 27, "given twice"),
])
def test_each_statement_is_checked_where_it_stands(compile_text, line, code, col, words):
    text = MAIN.replace("import", "def Block(d) x -> z { trunk { b: LStack(dim = d) x -> z } }\nimport") + line + "\n"
    c = compile_text(text, **{"lib.l3m": LIB})
    found = [e for e in errors(c) if e[0] == code]
    assert found, errors(c)
    assert found[0][1:3] == (12, col) and words in found[0][3], found


def test_did_you_mean_and_an_unused_default_warns(compile_text):
    c = compile_text(MAIN + "default LAtention(dropout = 0.1)\ndefault LNorm(eps = 0.1)\n", **{"lib.l3m": LIB})
    d = next(d for d in c.diagnostics if d.code == "E201")
    assert d.help == "did you mean 'LAttention'?"
    w = [d for d in c.diagnostics if d.code == "W105"]
    assert [(d.span.line, d.span.col) for d in w] == [(12, 15)] and "'LNorm.eps' applies to nothing" in w[0].message
    # a default every call overrides applies to nothing either; one shadowed by the main file's is fine
    c = compile_text(MAIN + "default LAttention(dropout = 0.1)\n", **{"lib.l3m": LIB})
    assert not [d for d in c.diagnostics if d.code == "W105"]


def test_bad_command_line_defaults(compile_text):
    c = compile_text(MAIN, overrides=["default.LStack=1", "default.LStak.depth=1", "default.LStack.dpth=1"],
                     **{"lib.l3m": LIB})
    codes = sorted(e[0] for e in errors(c))
    assert codes == ["E201", "E203", "E501"], errors(c)


def test_a_call_on_the_command_line_that_does_not_parse_is_an_error_not_a_string(compile_text):
    c = compile_text(MAIN, overrides=["default.LAttention.pos=LRope2d(", "m.trunk.t.depth=[1, "],
                     **{"lib.l3m": LIB})
    found = [d for d in c.diagnostics if d.code == "E501"]
    assert len(found) == 2 and all("does not parse" in d.message for d in found), errors(c)
    assert "E205" not in [d.code for d in c.diagnostics]  # not read as the string "LRope2d("


def test_a_component_default_is_checked_at_each_call_it_reaches(compile_text):
    c = compile_text(MAIN + "default LAttention(pos = LNorm())\n", **{"lib.l3m": LIB})
    found = [e for e in errors(c) if e[0] == "E205"]
    assert len(found) == 1 and found[0][1:3] == (11, 26), errors(c)  # reported once, where it is written


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from l3m.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_plan_why_traces_each_step(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    (tmp_path / "lib.l3m").write_text(LIB)
    main = tmp_path / "main.l3m"
    main.write_text(MAIN + "default LAttention(pos = LRope2d())\n")
    rc, out, err = _cli(["plan", str(main), "default.LRope2d.grid=8", "--why", "m.inner.trunk.b.attn.pos.grid"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "m.inner.trunk.b.attn.pos.grid = 8"
    assert "materialised `use(...)` default of LStack.attn" in lines[1]
    assert lines[2].startswith("  m.inner.trunk.b.attn.pos: LRope2d(grid=8)  <- `default` statement at ")
    assert lines[2].endswith("main.l3m:11:20")
    assert "command line (default.LRope2d.grid=...)" in lines[3]
    rc, out, _ = _cli(["plan", str(main), "--why", "trunk.t.depth"])  # the model's name may be left out
    assert rc == 0 and out.splitlines()[1].endswith("main.l3m:7:25") and "argument written" in out
    rc, out, _ = _cli(["plan", str(main), "--why", "m.trunk.s.attn.pos.base"])
    assert rc == 0 and "signature default of LRope2d" in out and out.startswith("m.trunk.s.attn.pos.base = 100.0")
    rc, out, _ = _cli(["plan", str(main), "--why", "m.inner.trunk.b.dim"])  # through a template parameter
    assert rc == 0 and "lib.l3m:3:21, from the template parameter 'd' set at " in out
    assert out.rstrip().endswith("main.l3m:9:27")
    rc, out, _ = _cli(["plan", str(main), "--why", "m.trunk.s.attn.heads"])
    assert rc == 0 and "supplied by the host" in out
    rc, out, err = _cli(["plan", str(main), "--why", "m.trunk.s.atn.pos"])
    assert rc == 2 and out == "" and "has no argument 'atn'; did you mean 'attn'?" in err
    rc, _, err = _cli(["plan", str(main), "--why", "m.trunk.x.depth"])
    assert rc == 2 and "names no argument" in err
    rc, out, _ = _cli(["plan", str(main), "train.steps=3", "--why", "train.steps"])  # settings too
    assert rc == 0 and out.splitlines() == ["train.steps = 3", "  train.steps: 3  <- command line (train.steps=...)"]


# `lint` and `plan --why` on a shipped ViT with one line added, in a process where torch cannot be imported.
_TORCHLESS = '''
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, Block())
from l3m.cli import main
print("lint", main(["lint", sys.argv[1]]), flush=True)
print("why", main(["plan", sys.argv[1], "--why", "vit.trunk.blocks.attn.pos"]), flush=True)
print("torch" in sys.modules)
'''


def test_one_line_gives_every_vit_attention_2d_rope_torch_free(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    from l3m import registry

    if registry.lookup("Rope2d") is None:
        pytest.skip("Rope2d is not registered yet")
    text = (ROOT / "examples" / "vit_digits.l3m").read_text()
    text = text.replace('"../models/', f'"{ROOT}/models/') + "default Attention(pos = Rope2d())\n"
    path = tmp_path / "vit_rope.l3m"
    path.write_text(text)
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", _TORCHLESS, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert "lint 0" in out, proc.stdout + proc.stderr
    assert "why 0" in out and out[-1] == "False", proc.stdout + proc.stderr
    assert "vit.trunk.blocks.attn.pos = Rope2d()" in out
    assert any("`default` statement at" in line and "vit_rope.l3m:" in line for line in out)


def test_a_model_cannot_be_named_default(compile_text):
    c = compile_text("l3m 1\nmodel default { trunk { s: LStack(dim = 4) x -> x } }\n")
    assert [e[0] for e in errors(c) if e[0] == "E503"] == ["E503"]

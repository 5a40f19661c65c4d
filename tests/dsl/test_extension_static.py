"""`lint` and `graph` read extension modules from source and never run them; `plan` imports them and says so."""

from __future__ import annotations

import inspect
import sys
import textwrap

import pytest
from helpers import ROOT

from l3m import registry
from l3m.cli import main
from l3m.dsl import compile_file
from l3m.dsl.ext_locate import locate, search_roots
from l3m.dsl.ext_static import read_extension

PKG = "l3mtestext"
MARK = "pathlib.Path(__file__).resolve().parent.parent.joinpath({!r}).write_text('ran')\n"

INIT = "import pathlib\n" + MARK.format("PARENT_RAN")
BLOCKS = "import pathlib\n" + MARK.format("MODULE_RAN") + textwrap.dedent('''
    from typing import Literal

    from torch import nn

    import l3m
    from l3m import register
    from l3m import register as reg
    from l3m.model.blocks.layers import Linear

    from .more import *  # noqa: F403 - registers a metric, as importing would


    class _Base(nn.Module):
        outputs = ("x",)

        def __init__(self, factor: float = 2.0, mode: Literal["a", "b"] = "a"):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor


    @register("block")
    class TestScale(_Base):
        """Multiplies by a factor."""


    @l3m.register(kind="block", name="TestGate")
    class Gate(nn.Module):
        outputs = ("x", "gate?")

        def __init__(self, dim: "int", bias: bool | None = None):
            super().__init__()

        def forward(self, x, mask=None):
            return x


    @reg("block")
    class TestDyn(nn.Module):
        outputs = tuple("xy")

        def forward(self, x):
            return x


    @register("block")
    class TestWide(Linear):
        pass
''')
MORE = "import pathlib\n" + MARK.format("MORE_RAN") + textwrap.dedent('''
    from l3m import register


    class TestCount:
        def forward(self, logits, targets):
            return logits


    register("metric")(TestCount)
''')

PROGRAM = """l3m 1
extension "l3mtestext.blocks"
data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  postprocessor { s: TestScale(factor = 3.0) x -> x
                  g: TestGate(dim = 16) (x = x, mask = x) -> x
                  w: TestWide(16, 16) x -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""
MARKERS = ("PARENT_RAN", "MODULE_RAN", "MORE_RAN")


@pytest.fixture
def project(tmp_path):
    """A project folder (not on sys.path) holding the extension package and a program that uses it."""
    pkg = tmp_path / PKG
    pkg.mkdir()
    (pkg / "__init__.py").write_text(INIT)
    (pkg / "blocks.py").write_text(BLOCKS)
    (pkg / "more.py").write_text(MORE)
    (tmp_path / "prog.l3m").write_text(PROGRAM)
    yield tmp_path
    assert PKG not in sys.modules and not any(m.startswith(PKG + ".") for m in sys.modules)


def ran(project) -> list[str]:
    return [m for m in MARKERS if (project / m).exists()]


def test_locate_never_imports_and_follows_the_search_order(project, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert locate(f"{PKG}.blocks", search_roots(None)) is None  # not on sys.path, not in the cwd
    roots = search_roots(str(project / "prog.l3m"))
    assert roots.index(project) > max(roots.index(p) for p in roots if str(p) in sys.path)  # sys.path first
    found = locate(f"{PKG}.blocks", roots)
    assert found.path == project / PKG / "blocks.py" and found.root == project and not found.is_package
    assert locate(PKG, roots).is_package and locate(f"{PKG}.nope", roots) is None
    assert ran(project) == []


def test_entries_read_from_source_match_the_registry_interface(project):
    ext = read_extension(f"{PKG}.blocks", [project])
    assert ext.error is None and ext.warnings == []
    assert set(ext.entries) == {"TestScale", "TestGate", "TestDyn", "TestWide", "TestCount"}
    scale, gate, dyn, wide, count = (ext.entries[n] for n in ("TestScale", "TestGate", "TestDyn", "TestWide", "TestCount"))
    assert scale.kind == "block" and scale.doc == "Multiplies by a factor." and scale.skipped == []
    assert str(scale.signature) == "(factor: float = 2.0, mode: Literal['a', 'b'] = 'a')"  # from the in-module base
    assert [p.name for p in scale.inputs] == ["x"] and [p.name for p in scale.outputs] == ["x"]
    assert list(gate.signature.parameters) == ["dim", "bias"] and gate.type_hints["dim"] is int
    assert [(p.name, p.optional) for p in gate.inputs] == [("x", False), ("mask", True)]
    assert [(p.name, p.optional) for p in gate.outputs] == [("x", False), ("gate", True)]
    assert dyn.outputs is None and "output-port checks skipped" in dyn.skipped[0]
    # A builtin base (imported from l3m, not from the project) gives its real constructor and ports.
    assert wide.signature == registry.lookup("Linear").signature and [p.name for p in wide.outputs] == ["x"]
    assert count.kind == "metric" and [p.name for p in count.inputs] == ["logits", "targets"]
    assert [p.name for p in count.outputs] == ["out"]
    assert ran(project) == []


def test_lint_and_graph_check_extension_blocks_without_running_them(project, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    prog = str(project / "prog.l3m")
    assert main(["lint", prog]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "note[N001]: reads extension module 'l3mtestext.blocks' without importing it" in err
    assert main(["graph", prog]) == 0
    assert "s: TestScale" in capsys.readouterr().out
    assert ran(project) == []


def test_blocks_lists_extension_entries_read_from_source(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    assert main(["blocks", "--kind", "block", "--extension", f"{PKG}.blocks", "-v"]) == 0
    out = capsys.readouterr().out
    assert "TestScale  x -> x    # Multiplies by a factor." in out and "TestDyn  x -> ?" in out
    assert "(dim: int, bias: Optional[bool] = None)" in out
    assert ran(project) == []


def test_lint_still_catches_wrong_arguments_and_ports_of_extension_blocks(project, capsys):
    prog = project / "prog.l3m"
    prog.write_text(PROGRAM.replace("TestScale(factor = 3.0)", 'TestScale(factr = 3.0, mode = "c")')
                    .replace("(x = x, mask = x) -> x", "(x = x, msk = x) -> x"))
    assert main(["lint", str(prog)]) == 1
    err = capsys.readouterr().err
    assert "prog.l3m:7:32: error[E203]: 'TestScale' has no argument 'factr'" in err
    assert "did you mean 'factor'?" in err
    assert "error[E205]: argument 'mode' of 'TestScale' must be one of 'a', 'b'" in err
    assert "prog.l3m:8:55: error[E301]: 'TestGate' has no input port 'msk'" in err
    assert ran(project) == []


def test_what_the_source_cannot_tell_is_a_warning_naming_the_skipped_check(project, capsys):
    prog = project / "prog.l3m"
    prog.write_text(PROGRAM.replace("w: TestWide(16, 16) x -> x }", "w: TestWide(16, 16) x -> x\n d: TestDyn() x -> x }"))
    assert main(["lint", str(prog)]) == 0
    err = capsys.readouterr().err
    assert "warning[W104]: the output ports of 'TestDyn' are not known statically" in err
    assert "output-port checks skipped" in err and "error[" not in err
    assert ran(project) == []


def test_missing_or_broken_extension_is_an_error_without_a_traceback(project, compile_text):
    c = compile_file(str(project / "prog.l3m"), extensions=("l3mtestext.absent",))
    assert [d.code for d in c.errors] == ["E405"] and "no Python source" in c.errors[0].message
    (project / PKG / "blocks.py").write_text("def broken(:\n")
    c = compile_file(str(project / "prog.l3m"))
    assert "E405" in [d.code for d in c.errors] and "SyntaxError" in c.errors[0].message
    assert ran(project) == []


def test_checking_never_builds_and_load_can_check_without_importing(project):
    import l3m

    compiled = l3m.load(str(project / "prog.l3m"), import_extensions=False)
    assert compiled.ok and not compiled.extensions_imported
    with pytest.raises(RuntimeError, match="read, not imported"):
        compiled.build_model()
    assert ran(project) == []


def test_plan_imports_the_extension_and_says_so(project, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # plan appends the project folder, where it found the module
    try:
        assert main(["plan", str(project / "prog.l3m")]) == 0
        out, err = capsys.readouterr()
        assert "note: importing extension module 'l3mtestext.blocks' (runs its code)" in err
        assert "parameters" in out
        assert ran(project) == list(MARKERS)
    finally:
        _forget(PKG, "TestScale", "TestGate", "TestDyn", "TestWide", "TestCount")


def _forget(module: str, *names: str) -> None:
    """Undo an import of a test extension: its modules and its registry entries."""
    for m in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        del sys.modules[m]
    for table in registry._REGISTRY.values():
        for n in names:
            table.pop(n, None)


PARITY = textwrap.dedent('''
    from typing import Literal, Optional

    from torch import nn

    from l3m import register


    class Mixin(nn.Module):
        outputs = ("y", "aux?")

        def forward(self, x, *rest, scale: float = 1.0, rng=None):
            return x


    @register("block")
    class ParityBlock(Mixin):
        def __init__(self, dim: int, /, depth: int = 2, kind: Literal["a", "b"] = "a", *,
                     eps: Optional[float] = None, sizes: list[int] = [1, 2], name: str = "x"):
            super().__init__()


    @register("optimizer")
    def ParityOpt(named_params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95)):
        return None
''')


def test_source_reading_agrees_with_importing(tmp_path, monkeypatch):
    (tmp_path / "l3mparityext.py").write_text(PARITY)
    static = read_extension("l3mparityext", [tmp_path]).entries
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    try:
        importlib.import_module("l3mparityext")
        for name, s in static.items():
            real = registry.lookup(name)
            assert s.kind == real.kind
            assert str(s.signature) == str(real.signature).replace("typing.", ""), name
            assert s.type_hints == real.type_hints, name
            assert s.inputs == real.inputs and s.outputs == real.outputs, name
            assert all(p.default == q.default for p, q in zip(s.signature.parameters.values(),
                                                              real.signature.parameters.values()))
    finally:
        _forget("l3mparityext", "ParityBlock", "ParityOpt")
    assert set(static) == {"ParityBlock", "ParityOpt"}
    assert inspect.Parameter.POSITIONAL_ONLY is static["ParityBlock"].signature.parameters["dim"].kind


FOREIGN = textwrap.dedent('''
    from torch import nn

    from l3m import register
    from otherpkg.layers import Base  # another package: never read, never imported


    @register("block")
    class Foreign(Base):
        pass


    @register("block")
    class Kw(nn.Module):
        outputs = ("x",)

        def __init__(self, dim: int, **options):
            super().__init__()

        def forward(self, x):
            return x
''')


def test_unknown_bases_and_kwargs_degrade_to_warnings(compile_text, tmp_path):
    (tmp_path / "l3mforeignext.py").write_text(FOREIGN)  # beside the .l3m file: found there
    src = PROGRAM.replace('"l3mtestext.blocks"', '"l3mforeignext"').replace(
        "postprocessor { s: TestScale(factor = 3.0) x -> x", "postprocessor { f: Foreign(anything = 1) x -> (y = x)"
    ).replace("g: TestGate(dim = 16) (x = x, mask = x) -> x", "k: Kw(dim = 2, extra = 3) x -> x").replace(
        "w: TestWide(16, 16) x -> x }", "}")
    c = compile_text(src)
    assert c.ok, [d.message for d in c.errors]
    warned = [d.message for d in c.diagnostics if d.code == "W104"]
    assert any("constructor of 'Foreign'" in w and "base class 'Base'" in w and "argument checks skipped" in w
               for w in warned), warned
    assert any("input ports of 'Foreign'" in w for w in warned) and any("output ports of 'Foreign'" in w for w in warned)
    assert any("'Kw' takes **options: argument names are not checked" in w for w in warned)
    bad = compile_text(src.replace("Kw(dim = 2, extra = 3)", 'Kw(dim = "two")'))
    assert [d.code for d in bad.errors] == ["E205"]  # what the source does tell is still checked


def test_editable_installs_are_found_from_their_finder_mapping(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "__editable___l3mtestext_0_1_finder.py").write_text(
        f"raise SystemExit('never run')\nMAPPING: dict[str, str] = {{'{PKG}': {str(project / PKG)!r}}}\n")
    found = locate(f"{PKG}.more", [site])
    assert found is not None and found.path == project / PKG / "more.py" and found.root == project
    assert read_extension(f"{PKG}.blocks", [site]).error is None
    assert ran(project) == []

"""The .l3m compiler front end: parse -> resolve -> check -> schedule (-> render)."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

from l3m.dsl import parser_cache  # noqa: F401 - first: imports Lark the fast way (see its docstring)
from l3m.dsl.check import check_all
from l3m.dsl.diagnostics import CompileError, Diagnostic, SourceCache
from l3m.dsl.instances import place_in_root
from l3m.dsl.ir import Program
from l3m.dsl.resolve import resolve
from l3m.dsl.schedule import Dataflow
from l3m.dsl.shapes import ShapeTable


@dataclass
class Compiled:
    """A compiled file: the program, its dataflow and everything the compiler had to say."""

    program: Program | None
    flow: Dataflow | None
    diagnostics: list[Diagnostic]
    sources: SourceCache
    # Whether `extension` modules were imported (True) or only read from source (False, the default).
    extensions_imported: bool = field(default=False, kw_only=True)
    # The static type of every key version (`l3m.dsl.shapes.ShapeTable`); None when not computed.
    shapes: ShapeTable | None = field(default=None, kw_only=True)

    @property
    def ok(self) -> bool:
        return self.program is not None and not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    def build_model(self, device: str = "meta"):
        """The `MetaModel`, its forward in this program's schedule order (on the meta device by default)."""
        from l3m.model.build import build_model
        from l3m.registry import load_builtins

        load_builtins()  # the live classes (checking used the manifest)
        self.raise_errors()
        if self.program.extensions and not self.extensions_imported:
            names = ", ".join(repr(m) for m, _ in self.program.extensions)
            raise RuntimeError(f"extension modules {names} were read, not imported; compile with "
                               "import_extensions=True (or use l3m.load) to build a model that uses them")
        return build_model(self.program, device=device, schedule=self.flow.model_order())

    def raise_errors(self) -> None:
        if not self.ok:
            raise CompileError(self.errors, self.sources)


def compile_file(path: str, overrides: list[str] | tuple[str, ...] = (), world_size: int | None = None,
                 extensions: tuple[str, ...] = (), import_extensions: bool = False) -> Compiled:
    """Check a file. `extension` modules are read from source, never run, unless `import_extensions`
    (what building, planning and training need: it imports them, saying so on stderr)."""
    # The front end allocates many small objects and frees none until it returns: the cyclic garbage
    # collector would only rescan them (40-50% of the time on big files), so it pauses meanwhile.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _compile(path, overrides, world_size, extensions, import_extensions)
    finally:
        if paused:
            gc.enable()


def _compile(path: str, overrides, world_size: int | None, extensions: tuple[str, ...],
             import_extensions: bool) -> Compiled:
    res = resolve(path, overrides, extensions, import_extensions)
    diags = list(res.diagnostics)
    flow = shapes = None
    if res.program is not None and not any(d.code in ("E001", "E002", "E004") for d in diags):
        flow, more, shapes = check_all(res.program, world_size)
        diags += place_in_root(res.program, more, res.chains)
    diags.sort(key=lambda d: (d.span.file if d.span else "", d.span.line if d.span else 0,
                              d.span.col if d.span else 0))
    return Compiled(res.program, flow, diags, res.sources, extensions_imported=import_extensions, shapes=shapes)


__all__ = ["Compiled", "CompileError", "compile_file"]

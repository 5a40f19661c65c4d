"""Files and imports: each `.l3m` file read once, parsed, and indexed into a scope table."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from l3m.dsl import ast
from l3m.dsl.ir import Span
from l3m.dsl.limits import MAX_FILE_BYTES
from l3m.dsl.parser import LANGUAGE_VERSION, ParseFailure, parse
from l3m.dsl.resolver.context import Reporter
from l3m.dsl.source import SourceRefused, read_source

# Why an imported file is refused -> its code (the file given on the command line gets E002).
_REFUSED = {"suffix": "E410", "special": "E411", "size": "E412", "text": "E413"}
_REFUSED_HELP = {
    "suffix": "only .l3m files can be imported",
    "special": "import regular .l3m files; pipes, devices, sockets and directories are not read",
    "size": f"split the file; the limit is {MAX_FILE_BYTES // (1024 * 1024)} MiB",
    "text": ".l3m files are UTF-8 text",
}


@dataclass
class ModuleScope:
    """One file's names: its lets, templates and imports, and the lets' values once evaluated."""

    module: ast.Module
    file: str
    lets: dict[str, ast.LetDecl] = field(default_factory=dict)
    defs: dict[str, ast.DefDecl] = field(default_factory=dict)
    imports: dict[str, ModuleScope] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    evaluating: set[str] = field(default_factory=set)
    used_imports: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # lets whose evaluation failed (and was reported)
    broken_imports: set[str] = field(default_factory=set)  # aliases of imports that failed (and were reported)


class Loader:
    """Reads a file and everything it imports; each file once (by real path), cycles reported."""

    def __init__(self, report: Reporter):
        self.report = report
        self.modules: dict[str, ModuleScope] = {}  # real path -> scope, in the order first read
        self.loading: list[str] = []  # the import path being followed (cycle detection)

    def load(self, path: str, import_span: Span | None = None) -> ModuleScope | None:
        """The scope of `path` (None when it cannot be read or parsed: already reported)."""
        error = self.report.error
        real = os.path.realpath(path)
        if real in self.loading:
            cycle = " -> ".join(os.path.relpath(p) for p in self.loading[self.loading.index(real):] + [real])
            error("E402", f"import cycle: {cycle}", import_span)
            return None
        if real in self.modules:
            return self.modules[real]
        shown = display(path)
        try:
            text = read_source(path)
        except FileNotFoundError:
            code = "E401" if import_span else "E002"
            error(code, f"cannot read '{path}': no such file", import_span)
            return None
        except SourceRefused as e:  # never parsed, so nothing of its contents can show in a message
            code = _REFUSED[e.kind] if import_span else "E002"
            error(code, f"cannot {'import' if import_span else 'read'} '{path}': it {e.reason}", import_span,
                  _REFUSED_HELP[e.kind] if import_span else None)
            return None
        except (OSError, ValueError) as e:
            code = "E401" if import_span else "E002"
            error(code, f"cannot read {e}" if isinstance(e, ValueError) else f"cannot read '{path}': {e.strerror or e}",
                  import_span)
            return None
        self.report.sources.add(shown, text)
        try:
            module = parse(text, shown)
        except ParseFailure as e:
            for d in e.diagnostics:  # several independent syntax errors, each with its own position
                error(d.code, d.message, d.span, d.help, d.notes)
            return None
        if module.version != LANGUAGE_VERSION:
            error("E003", f"this is l3m language version {LANGUAGE_VERSION}; the file asks for version "
                  f"{module.version}", module.version_span)
        scope = ModuleScope(module, shown)
        self.modules[real] = scope
        self.loading.append(real)
        try:
            self._index(scope)
        finally:
            self.loading.pop()
        return scope

    def _index(self, scope: ModuleScope) -> None:
        """Fill the scope table: lets and templates by name, imports loaded (depth first)."""
        error = self.report.error
        m = scope.module
        for let in m.lets:
            if let.name in scope.lets:
                error("E207", f"'{let.name}' is defined twice", let.span,
                      notes=[("first defined here", scope.lets[let.name].span)])
            scope.lets[let.name] = let
        for d in m.defs:
            if d.name in scope.defs:
                error("E207", f"template '{d.name}' is defined twice", d.span)
            scope.defs[d.name] = d
        base = os.path.dirname(scope.file)
        chains = self.report.chains
        for imp in m.imports:
            target = os.path.normpath(os.path.join(base, imp.path))
            chains.setdefault(display(target), chains.get(scope.file, ()) + (f"{imp.span}",))
            child = self.load(target, imp.span)
            if child is None:
                scope.broken_imports.add(imp.alias)  # its names are not reported again at each use
            else:
                if imp.alias in scope.imports:
                    error("E207", f"import name '{imp.alias}' is used twice", imp.alias_span)
                scope.imports[imp.alias] = child


def display(path: str) -> str:
    """How a file is named in messages: relative to the working directory when it lies below it."""
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    return absolute if rel.startswith("..") else rel

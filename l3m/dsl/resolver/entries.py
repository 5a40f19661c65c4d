"""Registered names: the registry, plus the entries of `extension` modules, read from their source
(checking a file never runs project code) or, for plan/train/eval/export, imported."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypeAlias

from l3m import registry
from l3m.dsl import ast
from l3m.dsl.ext_locate import import_extension, search_roots
from l3m.dsl.ext_static import StaticEntry, read_extension
from l3m.dsl.ir import Program, Span
from l3m.dsl.resolver.context import Reporter

if TYPE_CHECKING:
    Entry: TypeAlias = registry.Entry | StaticEntry

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class Catalog:
    """Looks names up: extension entries read from source first, then the registry."""

    def __init__(self, report: Reporter):
        self.report = report
        self.static: dict[str, StaticEntry] = {}
        self._reported: set[str] = set()

    def entry(self, name: str) -> Entry | None:
        return self.static.get(name) or registry.lookup(name)

    def names(self, kind: str) -> list[str]:
        return registry.names(kind) + [n for n, e in self.static.items() if e.kind == kind]

    def report_skipped(self, entry: Entry, span: Span) -> None:
        """Once per extension entry: which checks its source could not support (W104)."""
        if isinstance(entry, StaticEntry) and entry.skipped and entry.name not in self._reported:
            self._reported.add(entry.name)
            for text in entry.skipped:
                self.report.error("W104", text, span)

    def load_extensions(self, mod: ast.Module, cli_extensions: tuple[str, ...], import_extensions: bool,
                        path: str, prog: Program) -> None:
        """The file's `extension` lines and `--extension` modules: read (False) or imported (True)."""
        error = self.report.error
        wanted = [(e.module, e.span) for e in mod.extensions] + [(m, None) for m in cli_extensions]
        for module, span in wanted:
            if not _MODULE.fullmatch(module):
                error("E405", f"'{module}' is not a Python module name", span)
                continue
            if not import_extensions:
                self._read(module, span, path, prog)
                continue
            try:
                import_extension(module, search_roots(path))
            except Exception as e:  # an extension's own failure, reported rather than raised
                error("E405", f"extension '{module}' could not be imported: {type(e).__name__}: {e}", span)
                continue
            prog.extensions.append((module, span))
            error("N001", f"loads extension module '{module}'", span)

    def _read(self, module: str, span: Span | None, path: str, prog: Program) -> None:
        """Take an extension's entries from its source: checking a file never runs project code."""
        error = self.report.error
        ext = read_extension(module, search_roots(path))
        if ext.error:
            error("E405", f"extension '{module}' cannot be read, so it would not import: {ext.error}", span)
            return
        for text in ext.warnings:
            error("W104", f"extension '{module}': {text}", span)
        self.static.update(ext.entries)
        prog.static_entries.update(ext.entries)
        prog.extensions.append((module, span))
        error("N001", f"reads extension module '{module}' without importing it "
              f"({len(ext.entries)} entr{'y' if len(ext.entries) == 1 else 'ies'})", span)

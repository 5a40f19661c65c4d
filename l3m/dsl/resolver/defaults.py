"""`default NAME(args)` statements and `default.NAME.arg=VALUE` on the command line: an argument as if
written in every call of NAME (a node, a loss, a component, nested or materialised from `use(...)`) that
does not write it itself.

Scope: a file's statements apply to the calls written in that file and in every file it imports,
transitively (templates included); so the main file's apply everywhere. Precedence, first wins: the
command line, then the files in the order they were first read (the main file first, each file before
the files it imports). Each statement is checked once, where it stands: the name (registered entries
only, never templates), its arguments (the same binding routine as any call), their types.
"""

from __future__ import annotations

from dataclasses import dataclass

from l3m import registry
from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Origin, Span
from l3m.dsl.resolver.binding import bind
from l3m.dsl.resolver.calls import _parameters, _typecheck
from l3m.dsl.resolver.context import Fail
from l3m.dsl.resolver.evaluate import Env, PendingCall
from l3m.dsl.resolver.modules import ModuleScope
from l3m.dsl.resolver.overrides import Override
from l3m.dsl.resolver.tools import Tools
from l3m.dsl.typecheck import interfaces_in


@dataclass
class DefaultValue:
    """One `NAME.arg = value` in force, and the files whose calls it reaches (None: every file)."""

    entry: str
    arg: str
    value: object
    span: Span  # where the argument is written
    origin: Origin
    files: frozenset[str] | None
    used: bool = False


class Defaults:
    """The defaults in force, by (entry name, argument), highest precedence first."""

    def __init__(self) -> None:
        self.by_arg: dict[tuple[str, str], list[DefaultValue]] = {}

    def lookup(self, entry: str, arg: str, file: str) -> DefaultValue | None:
        """The default for `entry.arg` in force for a call written in `file`; every one in force there is
        marked used (a shadowed one still reaches that call's scope, so it is no mistake)."""
        found = [d for d in self.by_arg.get((entry, arg), ()) if d.files is None or file in d.files]
        for d in found:
            d.used = True
        return found[0] if found else None

    def collect(self, modules: list[ModuleScope], t: Tools) -> None:
        """Read and check the command line's `default.*` and every file's `default` statements."""
        for ov in [o for p, o in t.overrides.by_path.items() if p.startswith("default.")]:
            ov.used = True
            self._command_line(ov, t)
        for scope in modules:
            files = _closure(scope)
            seen: dict[tuple[str, str], Span] = {}
            for decl in scope.module.defaults:
                self._statement(decl, scope, files, seen, t)

    def report_unused(self, t: Tools) -> None:
        """W105: a default that no call in its scope takes (no such call, or each writes the argument)."""
        for values in self.by_arg.values():
            for d in values:
                if not d.used:
                    t.report.error("W105", f"default '{d.entry}.{d.arg}' applies to nothing: no call of "
                                   f"'{d.entry}' in its scope leaves '{d.arg}' unwritten", d.span)

    # ------------------------------------------------------------------ checking one
    def _command_line(self, ov: Override, t: Tools) -> None:
        parts = ov.path.split(".")
        if len(parts) != 3:
            t.report.error("E501", f"malformed default override '{ov.path}'; write default.NAME.ARG=VALUE, e.g. "
                           "default.Attention.pos=Rope2d()", ov.span)
            return
        _, name, arg = parts
        entry = self._entry(name, ov.span, None, t)
        if entry is None:
            return
        by_name, _, _ = _parameters(entry, name, t)
        if arg not in by_name:
            t.report.error("E203", f"'{name}' has no argument '{arg}'", ov.span,
                           did_you_mean(arg, by_name) or f"its arguments are: {', '.join(by_name) or 'none'}")
            return
        self._add(entry, name, arg, ov.expr, Env(t.evaluator.main), ov.expr.span,
                  Origin("command line", None, f"{ov.path}=..."), None, t)

    def _statement(self, decl: ast.DefaultDecl, scope: ModuleScope, files: frozenset[str],
                   seen: dict[tuple[str, str], Span], t: Tools) -> None:
        c = decl.call
        entry = self._entry(c.dotted, c.span, scope, t)
        if entry is None:
            return
        _, slots, words = _parameters(entry, c.dotted, t)
        for arg, a in bind(c.args, slots, words, t.report):
            if (c.dotted, arg) in seen:
                t.report.error("E207", f"a default for '{c.dotted}.{arg}' is given twice in this file", a.span,
                               notes=[("first here", seen[(c.dotted, arg)])])
                continue
            seen[(c.dotted, arg)] = a.span
            self._add(entry, c.dotted, arg, a.value, Env(scope), a.span, Origin("default", a.span), files, t)

    def _entry(self, name: str, span: Span, scope: ModuleScope | None, t: Tools):
        """The registered entry a default names (E201 unknown, E202 a template)."""
        entry = t.catalog.entry(name) if "." not in name else None
        if entry is not None:
            return entry
        if "." in name or (scope is not None and name in scope.defs):
            t.report.error("E202", f"'{name}' is a template; `default` sets arguments of registered blocks, losses "
                           "and components only", span, "give the template a parameter instead")
            return None
        pool = registry.names() + list(t.catalog.static)
        t.report.error("E201", f"unknown name '{name}' in a default", span,
                       did_you_mean(name, pool) or "run `l3m blocks` to list what exists")
        return None

    def _add(self, entry, name: str, arg: str, expr: ast.Expr, env: Env, span: Span, origin: Origin,
             files: frozenset[str] | None, t: Tools) -> None:
        """Evaluate the value once and check its type where it is written (a component is resolved at
        each call it reaches: which entries fit it is its parameter's business, known here too)."""
        try:
            value = t.evaluator.eval(expr, env)
        except Fail:
            return
        by_name, _, _ = _parameters(entry, name, t)
        ann = entry.type_hints.get(arg, by_name[arg].annotation if arg in by_name else None)
        if isinstance(value, PendingCall):
            if ann is not None and not interfaces_in(ann):
                t.report.error("E205", f"argument '{arg}' of '{name}' takes no component, not "
                               f"'{value.type_name}(...)'", value.expr.span)
                return
        elif ann is not None:
            before = len(t.report.diagnostics)
            _typecheck(value, ann, arg, expr, env, name, t)
            if len(t.report.diagnostics) > before:
                return
        self.by_arg.setdefault((entry.name, arg), []).append(DefaultValue(entry.name, arg, value, span, origin, files))


def _closure(scope: ModuleScope) -> frozenset[str]:
    """The files of `scope` and of everything it imports, transitively."""
    seen: dict[str, ModuleScope] = {}
    stack = [scope]
    while stack:
        s = stack.pop()
        if s.file in seen:
            continue
        seen[s.file] = s
        stack.extend(s.imports.values())
    return frozenset(seen)

"""Command-line overrides (`PATH=VALUE`): parsed before anything is read, so that they replace
expressions before evaluation (`dim=512` reaches every use of `dim`); each must be used once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from l3m.config import SECTION_SCHEMAS
from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Span
from l3m.dsl.parser import ParseFailure, parse_expr
from l3m.dsl.resolver.context import Reporter
from l3m.model import naming

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


# A value that starts like a call (`Rope2d(`) or a list (`[`): read as an expression or refused.
_STRUCTURED = re.compile(r"\s*(\[|[A-Za-z_][\w.]*\s*\()")


@dataclass
class Override:
    path: str
    expr: ast.Expr
    span: Span
    used: bool = False


@dataclass
class Overrides:
    """The parsed overrides, and every path the program offers (for 'did you mean')."""

    texts: list[str]
    report: Reporter
    by_path: dict[str, Override] = field(default_factory=dict)
    valid: set[str] = field(default_factory=set)  # every path that could have been overridden
    root_model: str | None = None  # the file's model: the first segment of its override paths

    def __post_init__(self) -> None:
        for i, text in enumerate(self.texts):
            self._parse(i, text)

    def _parse(self, i: int, text: str) -> None:
        error = self.report.error
        file = f"<override {i + 1}>"
        self.report.sources.add(file, text)
        path, eq, value = text.partition("=")
        path = path.strip()
        whole = Span(file, 1, 1, 1, len(text) + 1)
        if not eq or not _PATH.fullmatch(path):
            error("E501", f"malformed override '{text}'; write PATH=VALUE, e.g. train.steps=100", whole)
            return
        vcol = len(text) - len(value.lstrip()) + 1
        try:
            expr = parse_expr(value.strip() or '""', file)
        except ParseFailure as e:
            if e.diagnostic.code == "E430":  # a huge number is refused, not read as a string
                span = e.diagnostic.span
                error("E430", e.diagnostic.message, span and _shift_span(span, vcol - 1))
                return
            if _STRUCTURED.match(value):  # a call or a list that does not parse is a mistake, not a string
                d = e.diagnostic
                error("E501", f"the value of '{path}' does not parse: {d.message}",
                      _shift_span(d.span, vcol - 1) if d.span else whole,
                      "a component is a call such as Rope2d() or SwiGLU(hidden = 256); quote a string")
                return
            expr = ast.Str(Span(file, 1, 1, 1, len(value.strip()) + 1), value.strip().replace("\\", "\\\\"))
        expr = _shift(expr, vcol - 1)
        if path in self.by_path:
            error("E501", f"'{path}' is overridden twice", whole)
        self.by_path[path] = Override(path, expr, Span(file, 1, 1, 1, len(path) + 1))

    def take(self, path: str) -> ast.Expr | None:
        """The override of `path` (marked used), if any; `path` becomes a valid override path."""
        self.valid.add(path)
        ov = self.by_path.get(path)
        if ov is None:
            return None
        ov.used = True
        return ov.expr

    def take_let(self, name: str) -> ast.Expr | None:
        """The override of the main file's let `name` (marked used), if any."""
        ov = self.by_path.get(name)
        if ov is None:
            return None
        ov.used = True
        return ov.expr

    def peek_let(self, name: str) -> ast.Expr | None:
        """The override of the main file's let `name`, without using it (dependency order)."""
        ov = self.by_path.get(name)
        return None if ov is None else ov.expr

    def set_root_model(self, m: ast.ModelDecl | ast.ModelInst) -> None:
        """E503: a model named like a section or a node role would make override paths ambiguous."""
        self.root_model = m.name
        if m.name == "default":  # `default.NAME.arg=...` sets a class default
            self.report.error("E503", "a model cannot be named 'default': override paths starting with "
                              "'default.' set class defaults (`default.Attention.pos=...`)", m.span, "rename the model")
        elif m.name in naming.ROLE_ROOTS or m.name in SECTION_SCHEMAS:
            self.report.error("E503", f"a model cannot be named '{m.name}': override paths starting with "
                              f"'{m.name}.' name the {m.name} "
                              f"{'section' if m.name in SECTION_SCHEMAS else 'declarations'}",
                              m.span, "rename the model")

    def report_unused(self) -> None:
        """Each override must name something: E501 (E502 for the old `model.` spelling)."""
        for ov in self.by_path.values():
            if ov.used:
                continue
            new = naming.legacy_override(ov.path, self.root_model) if self.root_model else None
            if new is not None:  # `model.trunk.blocks.depth`: the spelling before one name per thing
                self.report.error("E502", f"override '{ov.path}' uses the old 'model.' prefix; the model is named "
                                  f"'{self.root_model}'", ov.span,
                                  did_you_mean(new, self.valid) or f"did you mean '{new}'?")
                continue
            self.report.error("E501", f"override '{ov.path}' names nothing in the program", ov.span,
                              did_you_mean(ov.path, self.valid))


def _shift(expr: ast.Expr, cols: int) -> ast.Expr:
    """Move an override value's spans to where the value stands in `PATH=VALUE`."""
    if cols == 0:
        return expr
    for obj in walk(expr):
        obj.span = _shift_span(obj.span, cols)
        if isinstance(obj, ast.CallExpr):
            for a in obj.args:
                a.span = _shift_span(a.span, cols)
    return expr


def _shift_span(s: Span, cols: int) -> Span:
    return Span(s.file, s.line, s.col + cols, s.end_line, s.end_col + cols)


def walk(expr: ast.Expr) -> Iterator[ast.Expr]:
    """Every sub-expression, without recursion."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, ast.ListExpr):
            stack.extend(e.items)
        elif isinstance(e, ast.BinOp):
            stack.extend((e.left, e.right))
        elif isinstance(e, ast.Neg):
            stack.append(e.operand)
        elif isinstance(e, ast.CallExpr):
            stack.extend(a.value for a in e.args)

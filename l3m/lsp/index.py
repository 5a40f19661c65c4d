"""What stands where in one file's syntax tree: every name, key, argument and reference with its span,
so hover, definition and completion can ask "what is under the cursor?" without re-walking the tree.

The resolver's program does not keep `let`/`def` positions or template parameters, so they are read here
from the parsed file itself.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from l3m.dsl import ast as a
from l3m.dsl.ir import Span
from l3m.lsp.positions import Pos, contains

# Where a call stands -> the registry kinds its name may be (what completion offers and hover looks up).
ROLE_KINDS = {"block": ("block",), "data": ("source", "generator"), "loss": ("loss",), "metric": ("metric",),
              "optimizer": ("optimizer",), "schedule": ("schedule",), "template": ()}


_SCAN = re.compile(r"#[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|[{}\n]")


class Braces:
    """Where each `{` closes, found once per text (strings and comments skipped)."""

    def __init__(self, text: str):
        self.opens: list[tuple[int, int]] = []
        self.close: dict[tuple[int, int], tuple[int, int]] = {}
        stack: list[tuple[int, int]] = []
        line, line_start = 1, 0
        for m in _SCAN.finditer(text):
            ch = m.group()
            if ch == "\n":
                line, line_start = line + 1, m.end()
            elif ch == "{":
                pos = (line, m.start() - line_start + 1)
                self.opens.append(pos)
                stack.append(pos)
            elif ch == "}" and stack:
                self.close[stack.pop()] = (line, m.start() - line_start + 2)

    def block(self, span: Span) -> Span:
        """From `span` to the `}` closing the first `{` after it (just `span` when there is none)."""
        i = bisect.bisect_left(self.opens, (span.end_line, span.end_col - 1))
        if i < len(self.opens) and self.opens[i] in self.close:
            end = self.close[self.opens[i]]
            return Span(span.file, span.line, span.col, end[0], end[1])
        return span


@dataclass
class Occurrence:
    """A span and what it is. kind: let, ref, def, param, defport, import, alias, extension, keydecl, node,
    type, arg, key, model, stage, section, setting. `data` depends on the kind (see `occurrences`)."""

    span: Span
    kind: str
    data: Any

    @property
    def size(self) -> tuple[int, int]:
        return (self.span.end_line - self.span.line, self.span.end_col - self.span.col)


def occurrences(mod: a.Module) -> list[Occurrence]:
    """Every occurrence in the file, in no particular order."""
    out: list[Occurrence] = []
    add = out.append

    def expr(e: a.Expr | None) -> None:
        stack = [e] if e is not None else []
        while stack:
            x = stack.pop()
            if isinstance(x, a.Ref):
                add(Occurrence(x.span, "ref", x))
            elif isinstance(x, a.ListExpr):
                stack.extend(x.items)
            elif isinstance(x, a.BinOp):
                stack += [x.left, x.right]
            elif isinstance(x, a.Neg):
                stack.append(x.operand)
            elif isinstance(x, a.CallExpr):  # a component value: `pos = Rope2d(base = 100)`
                call(x, "component")

    def call(c: a.CallExpr, role: str) -> None:
        add(Occurrence(c.span, "type", (c, role)))
        for arg in c.args:
            if arg.name is not None:
                add(Occurrence(arg.span, "arg", (c, arg, role)))
            expr(arg.value)

    def node(n: a.NodeDecl | a.ModelInst, role: str, model: str | None = None, stage: str | None = None) -> None:
        add(Occurrence(n.span, "node", (n, role, model, stage)))
        call(n.call, role)
        for direction, refs in (("read", n.reads), ("write", n.writes)):
            for r in refs:
                add(Occurrence(r.span, "key", (n, r, direction)))
        if isinstance(n, a.NodeDecl):
            expr(n.weight)

    def model(m: a.ModelDecl | a.ModelInst, path: str) -> None:
        if isinstance(m, a.ModelInst):
            node(m, "template", path)
            return
        add(Occurrence(m.span, "model", m))
        for item in m.order:
            if isinstance(item, a.StageDecl):
                add(Occurrence(item.span, "stage", item))
                for n in item.nodes:
                    node(n, "block", path, item.name)
            else:
                model(item, f"{path}.{item.name}")

    for let in mod.lets:
        add(Occurrence(let.span, "let", let))
        expr(let.value)
    for imp in mod.imports:
        add(Occurrence(imp.span, "import", imp))
        add(Occurrence(imp.alias_span, "alias", imp))
    for ext in mod.extensions:
        add(Occurrence(ext.span, "extension", ext))
    for k in mod.keys:
        add(Occurrence(k.span, "keydecl", k))
    for n in mod.data:
        node(n, "data")
    for m in mod.models:
        model(m, m.name)
    for d in mod.defs:
        add(Occurrence(d.span, "def", d))
        for p in d.params:
            add(Occurrence(p.span, "param", (d, p)))
            expr(p.default)
        for name, span in list(d.inputs) + list(d.outputs):
            add(Occurrence(span, "defport", (d, name)))
        model(d.body, d.name)
    for n in mod.losses:
        node(n, "loss")
    for n in mod.metrics:
        node(n, "metric")
    for dflt in getattr(mod, "defaults", ()):  # `default Attention(pos = Rope2d())`
        call(dflt.call, "default")
    for c in mod.optimizer:
        call(c, "optimizer")
    for c in mod.schedule:
        call(c, "schedule")
    for sec in mod.sections:
        add(Occurrence(sec.span, "section", sec))
        for s in sec.settings:
            add(Occurrence(s.span, "setting", (sec, s)))
            expr(s.value)
    return out


def find(occs: list[Occurrence], pos: Pos) -> Occurrence | None:
    """The narrowest occurrence under the cursor."""
    hits = [o for o in occs if contains(o.span, pos)]
    return min(hits, key=lambda o: o.size) if hits else None


def enclosing_def(mod: a.Module, pos: Pos, text: str) -> a.DefDecl | None:
    """The template whose braces hold `pos`."""
    braces = Braces(text)
    for d in mod.defs:
        body = braces.block(d.span)
        if (body.line - 1, body.col - 1) <= (pos.line, pos.char) <= (body.end_line - 1, body.end_col - 1):
            return d
    return None

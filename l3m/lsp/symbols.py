"""Document symbols: the file's outline. Lets, imports, templates, data sources, the model with its
sub-models, stages and blocks, losses, metrics, optimizer, schedule and settings sections."""

from __future__ import annotations

from lsprotocol import types as t

from l3m.dsl import ast as a
from l3m.dsl.ir import Span
from l3m.lsp.diagnostics import span_range
from l3m.lsp.documents import Document
from l3m.lsp.index import Braces

S = t.SymbolKind


def _upto(start: Span, *ends: Span | None) -> Span:
    last = max((e for e in ends if e is not None), key=lambda e: (e.end_line, e.end_col), default=start)
    return Span(start.file, start.line, start.col, last.end_line, last.end_col)


def _sym(name: str, kind: S, whole: Span, sel: Span, lines: list[str], enc: str, detail: str | None = None,
         children: list[t.DocumentSymbol] | None = None) -> t.DocumentSymbol:
    return t.DocumentSymbol(name=name, kind=kind, range=span_range(whole, lines, enc),
                            selection_range=span_range(sel, lines, enc), detail=detail, children=children or None)


def _expr_end(e: a.Expr | None) -> Span | None:
    return e.span if e is not None else None


def document_symbols(doc: Document, encoding: str = "utf-16") -> list[t.DocumentSymbol]:
    mod = doc.module()
    if mod is None:
        return []
    lines = doc.lines
    braces = Braces(doc.text)

    def sym(name, kind, whole, sel, detail=None, children=None):
        return _sym(name, kind, whole, sel, lines, encoding, detail, children)

    def node(n: a.NodeDecl | a.ModelInst, kind: S) -> t.DocumentSymbol:
        call_end = n.call.args[-1].value.span if n.call.args else n.call.span
        ends = [call_end, *(r.span for r in n.reads), *(r.span for r in n.writes)]
        if isinstance(n, a.NodeDecl):
            ends.append(_expr_end(n.weight))
        return sym(n.name, kind, _upto(n.span, *ends), n.span, n.call.dotted)

    def model(m: a.ModelDecl | a.ModelInst, detail: str = "model") -> t.DocumentSymbol:
        if isinstance(m, a.ModelInst):
            return node(m, S.Module)
        children = []
        for item in m.order:
            if isinstance(item, a.StageDecl):
                kids = [node(n, S.Object) for n in item.nodes]
                children.append(sym(item.name, S.Namespace, braces.block(item.span), item.span, "stage", kids))
            else:
                children.append(model(item))
        return sym(m.name, S.Module, braces.block(m.span), m.span, detail, children)

    out: list[tuple[tuple[int, int], t.DocumentSymbol]] = []

    def put(span: Span, s: t.DocumentSymbol) -> None:
        out.append(((span.line, span.col), s))

    for let in mod.lets:
        put(let.span, sym(let.name, S.Constant, _upto(let.span, let.value.span), let.span, "let"))
    for imp in mod.imports:
        put(imp.span, sym(imp.alias, S.Package, _upto(imp.span, imp.alias_span), imp.alias_span, f'import "{imp.path}"'))
    for ext in mod.extensions:
        put(ext.span, sym(ext.module, S.Package, ext.span, ext.span, "extension"))
    if mod.keys:
        first = mod.keys[0].span
        kids = [sym(k.name, S.Field, k.span, k.span, k.dtype + (f"[{', '.join(map(str, k.shape))}]" if k.shape else ""))
                for k in mod.keys]
        put(first, sym("keys", S.Struct, _upto(first, *(k.span for k in mod.keys)), first, None, kids))
    if mod.data:
        first = mod.data[0].span
        kids = [node(n, S.Object) for n in mod.data]
        ends = [r.span for n in mod.data for r in n.writes] + [n.call.span for n in mod.data]
        put(first, sym("data", S.Namespace, _upto(first, *ends), first, None, kids))
    for m in mod.models:
        put(m.span, model(m))
    for d in mod.defs:
        params = ", ".join(p.name for p in d.params)
        put(d.span, sym(d.name, S.Function, braces.block(d.span), d.span, f"def ({params})",
                        model(d.body).children))
    for n in mod.losses:
        put(n.span, node(n, S.Event))
    for n in mod.metrics:
        put(n.span, node(n, S.Event))
    for kind, calls in (("optimizer", mod.optimizer), ("schedule", mod.schedule)):
        for c in calls:
            put(c.span, sym(kind, S.Property, _upto(c.span, *(x.value.span for x in c.args)), c.span, c.dotted))
    for sec in mod.sections:
        kids = [sym(s.name, S.Property, _upto(s.span, s.value.span), s.span) for s in sec.settings]
        whole = braces.block(sec.span) if sec.name != "data" else _upto(sec.span, *(s.value.span for s in sec.settings))
        put(sec.span, sym(sec.name if sec.name != "data" else "data settings", S.Namespace, whole, sec.span, "settings",
                          kids))
    out.sort(key=lambda x: x[0])
    return [s for _, s in out]

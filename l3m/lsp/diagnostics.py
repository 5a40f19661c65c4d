"""Compiler diagnostics -> LSP diagnostics: exact ranges, severity, code, help and notes.

A problem inside an imported file is shown twice over: at the `import` line of this document (where
the user can act on it) with the file's own position in the message, and as related information that
jumps to the exact place.
"""

from __future__ import annotations

import os

from lsprotocol import types as t

from l3m.dsl import Compiled
from l3m.dsl.diagnostics import CODES, Diagnostic
from l3m.dsl.ir import Span
from l3m.lsp.documents import Document
from l3m.lsp.positions import path_to_uri, to_client

_SEVERITY = {"error": t.DiagnosticSeverity.Error, "warning": t.DiagnosticSeverity.Warning,
             "note": t.DiagnosticSeverity.Information}
_UNNECESSARY = {"W101", "W102", "W103"}  # shown faded, as editors show unused code


def span_range(span: Span, lines: list[str], encoding: str) -> t.Range:
    sl, sc = to_client(lines, span.line - 1, span.col - 1, encoding)
    el, ec = to_client(lines, span.end_line - 1, max(span.end_col - 1, 0), encoding)
    if (el, ec) < (sl, sc):
        el, ec = sl, sc
    return t.Range(t.Position(sl, sc), t.Position(el, ec))


def _lines_of(compiled: Compiled, file: str) -> list[str]:
    return compiled.sources.texts.get(file, [])


def location(compiled: Compiled, span: Span, encoding: str) -> t.Location:
    return t.Location(path_to_uri(os.path.abspath(span.file)), span_range(span, _lines_of(compiled, span.file), encoding))


def _link_range(link: str, lines: list[str], encoding: str) -> t.Range | None:
    """The range of an import-chain link `file:line:col` (the imported path's string) in this document."""
    try:
        _file, line_s, col_s = link.rsplit(":", 2)
        line, col = int(line_s), int(col_s)
    except ValueError:
        return None
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    end_col = col + 1
    if text[col - 1:col] == '"':
        close = text.find('"', col)
        end_col = close + 2 if close >= 0 else len(text) + 1
    return span_range(Span("", line, col, line, end_col), lines, encoding)


def convert(d: Diagnostic, doc: Document, compiled: Compiled, encoding: str = "utf-16") -> t.Diagnostic:
    lines = doc.compiled_text.split("\n") if doc.compiled_text is not None else doc.lines
    message = d.message
    related: list[t.DiagnosticRelatedInformation] = []
    span = d.span
    rng = t.Range(t.Position(0, 0), t.Position(0, 0))
    if span is not None and doc.is_this(span.file):
        rng = span_range(span, lines, encoding)
    elif span is not None:
        link = span.chain[0] if span.chain else None
        here = _link_range(link, lines, encoding) if link else None
        if here is not None:
            rng = here
        message = f"{span}: {message}"
        related.append(t.DiagnosticRelatedInformation(location(compiled, span, encoding), "here"))
    for text, where in d.notes:
        if where is None:
            message += f"\nnote: {text}"
        else:
            related.append(t.DiagnosticRelatedInformation(location(compiled, where, encoding), text))
    if d.help:
        message += f"\nhelp: {d.help}"
    return t.Diagnostic(
        range=rng, message=message, severity=_SEVERITY[d.severity], code=d.code, source="l3m",
        related_information=related or None,
        tags=[t.DiagnosticTag.Unnecessary] if d.code in _UNNECESSARY else None,
        data={"name": CODES.get(d.code, ("",))[0]},
    )


def to_lsp(doc: Document, encoding: str = "utf-16") -> list[t.Diagnostic]:
    """The document's compiled diagnostics, as `l3m lint` reports them, in LSP form."""
    compiled = doc.compiled
    if compiled is None:
        return []
    return [convert(d, doc, compiled, encoding) for d in compiled.diagnostics]

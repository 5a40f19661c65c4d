"""Formatting: the whole document in `l3m fmt`'s canonical layout, as one edit (none when it already is)."""

from __future__ import annotations

from lsprotocol import types as t

from l3m.dsl.fmt import FormatError, format_text
from l3m.dsl.parser import ParseFailure
from l3m.lsp.documents import Document


def format_document(doc: Document) -> list[t.TextEdit] | None:
    """The edits; None when the text does not parse (the editor keeps it as it is)."""
    try:
        out = format_text(doc.text, doc.display_name())
    except (ParseFailure, FormatError):
        return None
    if out == doc.text:
        return []
    lines = doc.lines
    end = t.Position(len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)
    return [t.TextEdit(t.Range(t.Position(0, 0), end), out)]

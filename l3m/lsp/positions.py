"""Spans (1-based line and column, in characters) <-> LSP positions (0-based, in the client's units).

LSP counts columns in UTF-16 code units unless the client agrees on another encoding, so a line with
an emoji in a comment must not shift every range after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlparse

from l3m.dsl.ir import Span


@dataclass(frozen=True)
class Pos:
    """A position in characters (code points), 0-based: what the analysis works in."""

    line: int
    char: int


def _units(text: str, encoding: str) -> int:
    if encoding == "utf-32":
        return len(text)
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def to_client(lines: list[str], line: int, char: int, encoding: str = "utf-16") -> tuple[int, int]:
    """(line, char in code points) -> (line, character in client units)."""
    if 0 <= line < len(lines) and encoding != "utf-32":
        return line, _units(lines[line][:char], encoding)
    return line, char


def from_client(lines: list[str], line: int, character: int, encoding: str = "utf-16") -> Pos:
    """(line, character in client units) -> a Pos in code points."""
    if not (0 <= line < len(lines)) or encoding == "utf-32":
        return Pos(line, character)
    text, used = lines[line], 0
    for i, ch in enumerate(text):
        if used >= character:
            return Pos(line, i)
        used += _units(ch, encoding)
    return Pos(line, len(text))


def span_start(span: Span) -> Pos:
    return Pos(span.line - 1, span.col - 1)


def span_end(span: Span) -> Pos:
    return Pos(span.end_line - 1, span.end_col - 1)


def contains(span: Span, pos: Pos) -> bool:
    """Whether the cursor at `pos` touches the span (its end included, as editors place the cursor there)."""
    return (span.line - 1, span.col - 1) <= (pos.line, pos.char) <= (span.end_line - 1, span.end_col - 1)


def uri_to_path(uri: str) -> str:
    """A file URI's path; other schemes (unsaved `untitled:` buffers) get a stand-in `.l3m` path in the
    working directory, so relative imports still resolve from somewhere sensible."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if os.name == "nt" and path.startswith("/") and len(path) > 2 and path[2] == ":":
            path = path[1:]
        return os.path.abspath(path)
    stem = "".join(c if c.isalnum() else "_" for c in (parsed.path or uri))[-60:] or "untitled"
    return os.path.abspath(f"{stem}.l3m" if not stem.endswith("l3m") else f"{stem[:-3]}.l3m")


def path_to_uri(path: str) -> str:
    absolute = os.path.abspath(path).replace(os.sep, "/")
    if not absolute.startswith("/"):
        absolute = "/" + absolute
    return "file://" + quote(absolute)


def same_file(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))

"""Incremental parsing for the language server: an edit re-parses only the pieces of the file it touched.

A file is cut into pieces at line starts: the header (`l3m 1` and whatever precedes the first item), each
top-level item (a line whose first word, at bracket depth 0, is one of the grammar's item keywords), and,
inside a long item, each node of a block (a line `name:` at the block's own depth). Each piece is parsed
alone (`parser.parse_piece`, padded with newlines so that positions are the file's) and kept with its
text; the next parse reuses every piece whose text is unchanged, moved to its new line when lines were
inserted or deleted above it. A long item is parsed as its skeleton (its nodes blanked out, newlines
kept) and its stages get their nodes back from the node pieces.

Why this is the whole-file parse: pieces are cut at line starts, where no token continues (strings and
comments end with their line), so each piece lexes as it does in the whole file; when every piece parses
as its rule, the file is a sentence of the grammar with that derivation, the only one an LALR(1) grammar
allows. Whenever the cut cannot be trusted (a piece does not parse, the header holds an item, a block's
nodes do not land in a stage, brackets nest too deep), the file is parsed whole, exactly as `l3m lint`
parses it, so syntax errors and their recovery are the compiler's own. Tests compare both on random edits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from collections.abc import Iterator
from typing import Any

from lark import Token

from l3m.dsl import ast
from l3m.dsl.ir import Span
from l3m.dsl.limits import MAX_DEPTH
from l3m.dsl.parser import PARSE_HOOK, assemble, item_keywords, parse, parse_piece

SPLIT_MIN_LINES = 40  # items shorter than this are parsed whole (cutting them buys nothing)

# What moves bracket depth: a string (to its closing quote or the line's end), a comment, a bracket, a newline.
_SCAN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[()\[\]{}\n]')
_WORD_AT = re.compile(r"[ \t\f\r]*([A-Za-z_][A-Za-z0-9_]*)")
_NODE_AT = re.compile(r"[ \t\f\r]*[A-Za-z_][A-Za-z0-9_]*[ \t\f\r]*:")
_REST_EMPTY = re.compile(r"[ \t\f\r]*(?:#[^\n]*)?(?:\n|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t\f\r]*$")


class _Untrusted(Exception):
    """The cut does not hold: parse the file whole."""


@dataclasses.dataclass
class _Scan:
    starts: list[int]  # offset of each line's start
    depths: list[int]  # bracket depth at each line's start
    blocks: list[tuple[int, int, int, int, int]]  # `{ }` pairs: (open offset, open line, close offset, close line, inside depth)
    deepest: int


def _scan(text: str) -> _Scan:
    starts, depths, blocks, stack = [0], [0], [], []
    depth = deepest = line = 0
    for m in _SCAN.finditer(text):
        c = text[m.start()]
        if c == "\n":
            line += 1
            starts.append(m.end())
            depths.append(depth)
        elif c in "([{":
            depth += 1
            deepest = max(deepest, depth)
            stack.append((c, m.start(), line))
        elif c in ")]}":
            if stack:
                opener, where, first = stack.pop()
                if c == "}" and opener == "{":
                    blocks.append((where, first, m.start(), line, depth))
            depth = max(0, depth - 1)
    return _Scan(starts, depths, blocks, deepest)


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _shift(obj: Any, lines: int, memo: dict[int, Any]) -> Any:
    """A copy of a parsed piece `lines` lines further down (objects shared within it stay shared)."""
    t = type(obj)
    if t is Span:
        d = obj.__dict__.copy()
        d["line"] += lines
        d["end_line"] += lines
        out = object.__new__(Span)
        object.__setattr__(out, "__dict__", d)
        return out
    if t in _ATOMS:
        return obj
    if t is list:
        return [_shift(x, lines, memo) for x in obj]
    if t is tuple:
        return tuple(_shift(x, lines, memo) for x in obj)
    hit = memo.get(id(obj))
    if hit is not None:
        return hit
    if not dataclasses.is_dataclass(t):
        raise _Untrusted(f"cannot move a {t.__name__}")
    out = memo[id(obj)] = object.__new__(t)
    object.__setattr__(out, "__dict__", {k: _shift(v, lines, memo) for k, v in obj.__dict__.items()})
    return out


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _stages(obj: Any, found: dict[tuple[int, int], ast.StageDecl], seen: set[int]) -> None:
    """Every stage in a parsed item, by where its name stands."""
    if id(obj) in seen or isinstance(obj, (str, int, float, type(None), Span)):
        return
    seen.add(id(obj))
    if isinstance(obj, ast.StageDecl):
        found[(obj.span.line, obj.span.col)] = obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _stages(x, found, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, ast.Expr):
        for name in _field_names(type(obj)):
            _stages(getattr(obj, name), found, seen)


class IncrementalParser:
    """Per file, the pieces of its last parse; `parse(text, file)` answers what `l3m.dsl.parser.parse` does."""

    def __init__(self) -> None:
        self.pieces: dict[str, dict[tuple[str, str], tuple[int, Any]]] = {}
        self.stats = {"reused": 0, "moved": 0, "parsed": 0, "whole": 0}  # pieces, for tests and the log
        # Nodes moved to other lines since `active()` began: id(new call) -> (new call, old call, lines moved,
        # (first, last) 1-based lines of the old node), so that `ResolveMemo` can replay them moved too.
        self.moved: dict[int, tuple[Any, Any, int, tuple[int, int]]] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, every parse (the document and the files it imports) goes through this parser."""
        token = PARSE_HOOK.set(self.parse)
        self.moved = {}
        try:
            yield
        finally:
            PARSE_HOOK.reset(token)

    def parse(self, text: str, file: str) -> ast.Module:
        old = self.pieces.get(file, {})
        new: dict[tuple[str, str], tuple[int, Any]] = {}
        try:
            module = self._parse(text, file, old, new)
        except Exception:  # noqa: BLE001 - a cut that does not hold, a piece the grammar refuses, a limit:
            self.pieces.pop(file, None)  # the whole file is parsed (and says why, when it does not parse)
            self.stats["whole"] += 1
            return _whole(text, file)
        self.pieces[file] = new
        return module

    # ------------------------------------------------------------------ pieces
    def _piece(self, rule: str, text: str, line: int, file: str, old: dict, new: dict) -> Any:
        """The parse of one piece starting at 0-based `line`: reused, moved, or parsed now."""
        key = (rule, text)
        hit = new.get(key) or old.get(key)
        if hit is not None and hit[0] == line:
            self.stats["reused"] += 1
            value = hit[1]
        elif hit is not None:
            self.stats["moved"] += 1
            value = _shift(hit[1], line - hit[0], {})
            old_call, new_call = getattr(hit[1], "call", None), getattr(value, "call", None)
            if rule == "node" and old_call is not None and new_call is not None:
                self.moved[id(new_call)] = (new_call, old_call, line - hit[0],
                                            (hit[0] + 1, hit[0] + 1 + text.count("\n")))
        else:
            self.stats["parsed"] += 1
            value = parse_piece("\n" * line + text, file, rule)
        if key not in new or new[key][0] != line:
            new[key] = (line, value)
        return value

    def _parse(self, text: str, file: str, old: dict, new: dict) -> ast.Module:
        sc = _scan(text)
        if sc.deepest > MAX_DEPTH:
            raise _Untrusted("too deep")
        keywords = item_keywords()
        items = []
        for i, start in enumerate(sc.starts):
            if sc.depths[i] == 0:
                m = _WORD_AT.match(text, start)
                if m and m.group(1) in keywords:
                    items.append(i)
        ends = items[1:] + [None]
        head_end = sc.starts[items[0]] if items else len(text)
        head = self._piece("program", text[:head_end], 0, file, old, new)
        if head != ast.Module(head.file, head.version, head.version_span):
            raise _Untrusted("the header holds items")
        vs = head.version_span
        version = Token("INT", str(head.version), line=vs.line, column=vs.col, end_line=vs.end_line,
                        end_column=vs.end_col)
        parsed = []
        for first, last in zip(items, ends):
            stop = sc.starts[last] if last is not None else len(text)
            parsed.append(self._item(text, sc, first, last if last is not None else len(sc.starts), stop,
                                     file, old, new))
        return assemble(file, version, parsed)

    def _item(self, text: str, sc: _Scan, first: int, last: int, stop: int, file: str, old: dict, new: dict) -> Any:
        """One top-level item on lines [first, last) (text up to offset `stop`)."""
        begin = sc.starts[first]
        whole = text[begin:stop]
        if last - first >= SPLIT_MIN_LINES and ("item", whole) not in old and ("item", whole) not in new:
            regions = _node_regions(text, sc, begin, stop)
            if regions:
                split = self._split_item(text, sc, first, begin, stop, regions, file, old, new)
                if split is not None:
                    new[("item", whole)] = (first, split)  # unchanged next time: reused whole
                    return split
        return self._piece("item", whole, first, file, old, new)

    def _split_item(self, text: str, sc: _Scan, first: int, begin: int, stop: int, regions: list, file: str,
                    old: dict, new: dict) -> Any | None:
        """A long item as its skeleton plus its nodes; None when a block's nodes do not land in a stage."""
        parts, at = [], begin
        for _header, lo, hi, _nodes in regions:
            parts.append(text[at:sc.starts[lo]])
            parts.append("\n" * (hi - lo))
            at = sc.starts[hi]
        parts.append(text[at:stop])
        skeleton = parse_piece("\n" * first + "".join(parts), file, "item")
        found: dict[tuple[int, int], ast.StageDecl] = {}
        _stages(skeleton, found, set())
        fills = []
        for header, _lo, _hi, nodes in regions:
            stage = found.get(header)
            if stage is None or stage.nodes:
                return None
            fills.append((stage, nodes))
        for stage, nodes in fills:
            stage.nodes = [self._piece("node", text[sc.starts[a]:sc.starts[b]], a, file, old, new) for a, b in nodes]
        return skeleton


def _node_regions(text: str, sc: _Scan, begin: int, stop: int) -> list[tuple[tuple[int, int], int, int, list]]:
    """The blocks inside [begin, stop) whose lines are nodes: (header's (line, col) 1-based, first node
    line, closing line, [(node's first line, next piece's line)]); lines 0-based."""
    out = []
    for open_at, open_line, close_at, close_line, inside in sc.blocks:
        if not begin <= open_at < stop or close_line - open_line < 2:
            continue
        if not _REST_EMPTY.match(text, open_at + 1) or text[sc.starts[close_line]:close_at].strip(" \t\f\r"):
            continue
        word = _WORD_BEFORE.search(text, sc.starts[open_line], open_at)
        if word is None:
            continue
        starts = [j for j in range(open_line + 1, close_line)
                  if sc.depths[j] == inside and _NODE_AT.match(text, sc.starts[j])]
        if not starts:
            continue
        header = (open_line + 1, word.start(1) - sc.starts[open_line] + 1)
        out.append((header, starts[0], close_line, list(zip(starts, starts[1:] + [close_line]))))
    out.sort(key=lambda r: r[1])
    for (_h, _lo, hi, _n), (_h2, lo2, _hi2, _n2) in zip(out, out[1:]):
        if lo2 < hi:  # one block's nodes inside another's: no cut here
            return []
    return out


def _whole(text: str, file: str) -> ast.Module:
    """The ordinary parse of the whole file (with the hook off, so it does not come back here)."""
    token = PARSE_HOOK.set(None)
    try:
        return parse(text, file)
    finally:
        PARSE_HOOK.reset(token)

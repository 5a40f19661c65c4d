"""`l3m fmt`: one canonical layout for `.l3m` text, keeping every comment and every line break.

Why a token printer and not an AST printer: the AST drops comments, and where a writer breaks a long
call is a choice worth keeping. So the formatter keeps the file's tokens and its line structure, and
decides only the white space: indentation (2 per block, continuation lines under the bracket or value
they continue), spacing between tokens, at most one blank line in a row, and gofmt-style columns in
runs of similar statements (`let` names, node names, bindings, a loss's `weight`, settings keywords,
trailing comments; the nodes of a row of one-line stage blocks are one run).
It depends only on tokens and line breaks, never on the input's spacing, so it is idempotent; the
output is re-lexed and must give the same tokens, so it cannot change meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from l3m.dsl.parser import parse

_FLOAT = r"[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
_LEX = re.compile(
    r"(?P<ws>[ \t\r\f\v]+)|(?P<nl>\n)|(?P<comment>#[^\n]*)|(?P<string>\"(?:[^\"\\\n]|\\.)*\")"
    rf"|(?P<float>{_FLOAT})|(?P<int>[0-9][0-9_]*)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>->|\*\*|//|[{}()\[\],:=.+\-*/%!])"
)

_OPENERS, _CLOSERS = "([{", ")]}"
_BINARY_OR_OPEN = {"(", "[", "{", ",", "=", ":", "->", "+", "-", "*", "/", "//", "%", "**", "weight"}
_SECTION_KW = {"optimizer", "schedule", "train", "mesh", "log"}
_STAGES = {"preprocessor", "trunk", "postprocessor", "head"}
_COMMENT_GAP = 2  # spaces before a trailing comment, at least
_BINDING_GAP = 2  # spaces between a node's call and its bindings, at least
_MAX_ALIGN = 120  # a column is not widened to reach past this


class FormatError(Exception):
    """The formatter would change the file's tokens (a bug: nothing is written)."""


@dataclass
class _Tok:
    kind: str
    text: str


@dataclass
class _Stmt:
    line: int
    kind: str
    parent: int
    value_idx: int | None
    depth: int = 0
    run: int = -1
    value_col: int | None = None
    indent: int = 0
    gaps: dict[tuple[int, int], int] = field(default_factory=dict)


def _lex(text: str) -> list[list[_Tok]]:
    """Tokens per source line (a blank line is an empty list)."""
    lines: list[list[_Tok]] = [[]]
    pos = 0
    while pos < len(text):
        m = _LEX.match(text, pos)
        if m is None:  # the parser accepted the text, so this cannot happen; fail safe, write nothing
            raise FormatError(f"cannot tokenize at offset {pos}")
        kind = m.lastgroup
        if kind == "nl":
            lines.append([])
        elif kind == "comment":
            lines[-1].append(_Tok(kind, m.group().rstrip()))  # trailing blanks (and a CR) are not content
        elif kind != "ws":
            lines[-1].append(_Tok(kind, m.group()))
        pos = m.end()
    return lines


def _is_stmt_start(toks: list[_Tok]) -> bool:
    t0 = toks[0].text
    t1 = toks[1].text if len(toks) > 1 else ""
    k1 = toks[1].kind if len(toks) > 1 else ""
    if toks[0].kind == "comment":
        return False
    if t0 == "}":
        return True
    if toks[0].kind != "name":
        return False
    if t1 in (":", "="):
        return True
    if t0 in _STAGES or t0 in {"train", "mesh", "log", "keys", "data"}:
        return t1 == "{"
    if t0 in {"let", "def", "loss", "metric", "model", "optimizer", "schedule", "default"}:
        return k1 == "name"
    if t0 in {"import", "extension"}:
        return k1 == "string"
    return t0 == "l3m" and k1 == "int"


def _classify(toks: list[_Tok], top_level: bool) -> tuple[str, int | None]:
    """A statement's kind (what it aligns with) and the index of its value token (where continuations go)."""
    t = [x.text for x in toks]
    inline_brace = "{" in t and t.index("{") + 1 < len(t) and toks[t.index("{") + 1].kind != "comment"
    if t[0] == "let":
        return "let", (t.index("=") + 1 if "=" in t else None)
    if t[0] in ("loss", "metric") and len(t) > 2 and t[2] == ":":
        return "lossmetric", 3
    if t[0] == "model" and len(t) > 2 and t[2] == "=":
        return "modelinst", 3
    if len(t) > 1 and t[1] == ":":
        return "node", 2
    if len(t) > 1 and t[1] == "=":
        return "assign", 2
    if top_level and t[0] in _SECTION_KW and not (len(t) > 1 and t[1] in (":", "=")):
        return "section", 1
    if t[0] in _STAGES and inline_brace:
        return "stage", 1
    return "other", None


def _cell_gaps(stmt: _Stmt, toks: list[_Tok], widths: list[int]) -> None:
    """Gaps that align this statement's leading cells to the widths of its run."""
    li = stmt.line
    if stmt.kind in ("let", "modelinst", "assign"):
        name_idx = 1 if stmt.kind != "assign" else 0
        if name_idx + 1 < len(toks):
            stmt.gaps[(li, name_idx + 1)] = 1 + widths[0] - len(toks[name_idx].text)
    elif stmt.kind == "node" and len(toks) > 2:
        stmt.gaps[(li, 2)] = 1 + widths[0] - len(toks[0].text) - 1
    elif stmt.kind == "lossmetric":
        stmt.gaps[(li, 1)] = 1 + widths[0] - len(toks[0].text)
        if len(toks) > 3:
            stmt.gaps[(li, 3)] = 1 + widths[1] - len(toks[1].text) - 1
    elif stmt.kind in ("section", "stage") and len(toks) > 1:
        stmt.gaps[(li, 1)] = 1 + widths[0] - len(toks[0].text)


def _cells(stmt: _Stmt, toks: list[_Tok]) -> list[int]:
    if stmt.kind in ("let", "modelinst"):
        return [len(toks[1].text)]
    if stmt.kind == "assign":
        return [len(toks[0].text)]
    if stmt.kind == "node":
        return [len(toks[0].text) + 1]
    if stmt.kind == "lossmetric":
        return [len(toks[0].text), len(toks[1].text) + 1]
    return [len(toks[0].text)]


def _structure(lines: list[list[_Tok]]) -> tuple[dict[int, _Stmt], dict[tuple[int, int], object]]:
    """Statements (by first line), their runs and cell gaps, and where each node's bindings start.

    A statement starts at the beginning of a line outside any bracket other than a block's `{` that ends
    its line; inside `(`, `[` or a `{ ... }` written inline, a new line continues what came before."""
    stmts: dict[int, _Stmt] = {}
    stack: list[tuple[str, bool]] = []  # (bracket, continues: inline `{`, or `(`/`[`)
    binding_marks: dict[tuple[int, int], object] = {}  # (line, tok) -> owner: a statement line, or a solo key
    owner: object = None
    pending: object = None
    call_depth, call_state = 0, "none"  # none -> wait_call -> in_call -> after_call
    for li, toks in enumerate(lines):
        if not toks:
            continue
        if not any(cont for _, cont in stack) and _is_stmt_start(toks) and toks[0].text != "}":
            parent = _parent(stmts, stack)
            kind, value_idx = _classify(toks, top_level=not stack)
            stmts[li] = _Stmt(li, kind, parent, value_idx, depth=len(stack))
            owner = li
            call_state = "wait_call" if kind in ("node", "lossmetric", "modelinst") else "none"
            call_depth = 0
        if pending is not None and toks[0].kind != "comment":
            if li not in stmts:
                binding_marks[(li, 0)] = pending
            pending = None
        for ti, tok in enumerate(toks):
            if tok.kind == "comment":
                continue
            if call_state == "wait_call" and tok.text == "(":
                call_state = "in_call"
            elif call_state == "in_call":
                if tok.text in _OPENERS:
                    call_depth += 1
                elif tok.text in _CLOSERS:
                    if call_depth == 0:
                        call_state = "after_call"
                        if ti + 1 < len(toks) and toks[ti + 1].kind != "comment":
                            binding_marks[(li, ti + 1)] = owner
                        else:
                            pending = owner  # the bindings start the next line
                    else:
                        call_depth -= 1
            elif (call_state == "after_call" and tok.text == "weight" and ti > 0
                  and toks[ti - 1].text not in ("->", ",", "(", "=", "!")):  # not a key named `weight`
                binding_marks[(li, ti)] = ("weight", owner)  # `weight` columns align in a run of losses
            if tok.text in _OPENERS:
                nxt = toks[ti + 1] if ti + 1 < len(toks) else None
                inline = nxt is not None and nxt.kind != "comment"
                stack.append((tok.text, tok.text != "{" or inline))
                if tok.text == "{" and inline and len(toks) > ti + 2 and toks[ti + 2].text == ":":
                    owner, call_state, call_depth = ("solo", li, ti), "wait_call", 0  # `{ name: Call() a -> b }`
            elif tok.text in _CLOSERS and stack:
                stack.pop()
    _assign_runs(lines, stmts)
    return stmts, binding_marks


def _parent(stmts: dict[int, _Stmt], stack: list[tuple[str, bool]]) -> int:
    """The block a statement is in: the line of the latest statement one level up (-1: top level)."""
    depth = len(stack)
    if depth == 0:
        return -1
    for li in sorted(stmts, reverse=True):
        if stmts[li].depth == depth - 1:
            return li
    return -1


def _assign_runs(lines: list[list[_Tok]], stmts: dict[int, _Stmt]) -> None:
    order = sorted(stmts)
    last_in_parent: dict[int, _Stmt] = {}
    run_id = 0
    runs: dict[int, list[_Stmt]] = {}
    for li in order:
        s = stmts[li]
        prev = last_in_parent.get(s.parent)
        joined = (prev is not None and prev.kind == s.kind and s.kind != "other"
                  and all(lines[k] for k in range(prev.line, li)))
        if not joined:
            run_id += 1
        s.run = run_id
        runs.setdefault(run_id, []).append(s)
        last_in_parent[s.parent] = s
    for members in runs.values():
        if members[0].kind == "other":
            continue
        cells = [_cells(m, lines[m.line]) for m in members]
        widths = [max(c[i] for c in cells) for i in range(len(cells[0]))]
        for m in members:
            _cell_gaps(m, lines[m.line], widths)


def _gap(prev: _Tok | None, prev2: _Tok | None, tok: _Tok) -> int:
    """Spaces between two tokens on one line, before any alignment."""
    if prev is None:
        return 0
    a, b = prev.text, tok.text
    if tok.kind == "comment":
        return _COMMENT_GAP
    if prev.kind == "op" and a in ("-", "+") and (prev2 is None or prev2.text in _BINARY_OR_OPEN):
        return 0  # unary sign
    if a in ("(", "[", ".", "!"):
        return 0 if b != "{" else 1
    if b in (")", "]", ",", ":", "."):
        return 0
    if b == "(" and prev.kind == "name" and a != "weight":
        return 0
    if b == "[" and prev.kind == "name":
        return 0
    if a == "{" and b == "}":
        return 0
    return 1


@dataclass
class _Opener:
    ch: str
    content_col: int | None  # where a continuation line goes when the bracket is not last on its line
    close_indent: int  # of its closer at a line start: the line's indent, or for `{` its statement's


def format_text(text: str, file: str = "<string>") -> str:
    """The canonical layout of `text`; raises `ParseFailure` on a syntax error (nothing else is checked)."""
    parse(text, file)
    lines = _lex(text)
    stmts, binding_marks = _structure(lines)
    gaps: dict[tuple[int, int], int] = {}
    for s in stmts.values():
        gaps.update(s.gaps)
    for li, ti in binding_marks:
        if ti:
            gaps[(li, ti)] = _BINDING_GAP
    rendered: list[list[list]] = []  # per line: [[gap, text, kind], ...] (first gap = indent); [] = blank
    stack: list[_Opener] = []
    prev: _Tok | None = None
    prev2: _Tok | None = None
    cur: _Stmt | None = None
    for li, toks in enumerate(lines):
        if not toks:
            rendered.append([])
            continue
        top = stack[-1] if stack else None
        first = toks[0]
        if first.kind == "op" and first.text in _CLOSERS and top is not None:
            indent = top.close_indent
        elif top is not None and (top.ch in "([" or top.content_col is not None):
            indent = top.content_col if top.content_col is not None else top.close_indent + 4
        elif li in stmts or first.kind == "comment" or cur is None:
            indent = 0 if top is None else top.close_indent + 2
        else:
            indent = cur.value_col if cur.value_col is not None else cur.indent + 4
        if li in stmts:
            cur = stmts[li]
            cur.indent = indent
        row: list[list] = []
        col = indent
        for ti, tok in enumerate(toks):
            g = indent if ti == 0 else gaps.get((li, ti), _gap(prev, prev2, tok))
            col += g if ti else 0
            row.append([g, tok.text, tok.kind, col])
            if li in stmts and ti == stmts[li].value_idx:
                stmts[li].value_col = col
            col += len(tok.text)
            if tok.kind == "op" and tok.text in _OPENERS:
                nxt = toks[ti + 1] if ti + 1 < len(toks) else None
                content = None if nxt is None or nxt.kind == "comment" else col + gaps.get((li, ti + 1),
                                                                                          _gap(tok, prev, nxt))
                base = cur.indent if tok.text == "{" and cur is not None else indent
                stack.append(_Opener(tok.text, content, base))
            elif tok.kind == "op" and tok.text in _CLOSERS and stack:
                stack.pop()
            if tok.kind != "comment":
                prev2, prev = prev, tok
        rendered.append(row)
    _align_bindings(rendered, binding_marks, stmts)
    _align_comments(rendered)
    out = _join(rendered)
    if [(t.kind, t.text) for line in _lex(out) for t in line] != [(t.kind, t.text) for line in lines for t in line]:
        raise FormatError("formatting would change the tokens")
    return out


def _line_len(row: list[list]) -> int:
    return sum(g + len(t) for g, t, *_ in row)


def _col(row: list[list], ti: int) -> int:
    return sum(g + len(t) for g, t, *_ in row[:ti]) + row[ti][0]


def _align_bindings(rendered: list[list[list]], marks: dict[tuple[int, int], object], stmts: dict[int, _Stmt]) -> None:
    """Bindings of a run of nodes start in one column, and so do the `weight`s of a run of losses.

    The column is the furthest start of a binding written after its call that every such binding left of
    it can reach within the line limit (one that starts further right keeps its place); bindings on a line
    of their own move to it when they fit."""
    groups: tuple[dict[object, list[tuple[int, int]]], ...] = ({}, {})  # bindings first: weights come after
    for (li, ti), owner in marks.items():
        weight = isinstance(owner, tuple) and owner[0] == "weight"
        if weight:
            owner = owner[1]
        groups[weight].setdefault(_run_of(owner, stmts), []).append((li, ti))
    for by_run in groups:
        for members in by_run.values():
            natural = {m: _col(rendered[m[0]], m[1]) for m in members}
            room = {m: _MAX_ALIGN - _line_len(rendered[m[0]]) + natural[m] for m in members}  # furthest start
            inline = [m for m in members if m[1] > 0]
            target = max((natural[t] for t in inline if all(room[m] >= natural[t] for m in inline
                                                              if natural[m] < natural[t])), default=0)
            for m in members:
                if natural[m] < target <= room[m]:
                    rendered[m[0]][m[1]][0] += target - natural[m]


def _run_of(owner: object, stmts: dict[int, _Stmt]) -> object:
    """What a node's bindings align with: its run of statements; for a node in a one-line stage block
    (`head { name: Call()  a -> b }`), the nodes of the run of such stage lines."""
    if isinstance(owner, tuple) and owner[0] == "solo" and owner[1] in stmts:
        return ("stages", stmts[owner[1]].run)
    return stmts[owner].run if isinstance(owner, int) else owner


def _align_comments(rendered: list[list[list]]) -> None:
    """Trailing comments of adjacent lines share a column (the furthest code end + 2)."""
    group: list[int] = []

    def flush() -> None:
        if len(group) > 1:
            ends = {li: _line_len(rendered[li][:-1]) for li in group}
            target = max(ends.values()) + _COMMENT_GAP
            for li in group:
                rendered[li][-1][0] = target - ends[li]
        group.clear()

    for li, row in enumerate(rendered):
        if len(row) > 1 and row[-1][2] == "comment":
            group.append(li)
        else:
            flush()
    flush()


def _join(rendered: list[list[list]]) -> str:
    out: list[str] = []
    for li, row in enumerate(rendered):
        if not row:
            prev_code = out[-1] if out else None
            nxt = next((r for r in rendered[li + 1:] if r), None)
            if prev_code is None or prev_code == "" or nxt is None:
                continue
            if prev_code.rstrip().endswith("{") or nxt[0][1] == "}":
                continue
            out.append("")
            continue
        out.append("".join(" " * g + t for g, t, *_ in row))
    return "\n".join(out) + "\n"

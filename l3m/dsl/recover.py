"""After a file's first syntax error, find its other independent syntax errors, not their follow-ons.

Runs only on a file that failed to parse, over its tokens and the LALR table alone: no AST is built and
no parse callback runs, so the accelerated and the pure parser report the same errors and nothing of the
shared parser changes. At each error it takes the repair that lets the most following tokens parse:
insert one expected symbol (a forgotten `)` or `{`), drop the token (a doubled `=`), replace it (a
misspelled keyword), or else skip to the next line that starts an item or closes a block and resume in
the innermost enclosing block that accepts that line. An error within a few tokens of a repair, or on
the line of the previous error, is a follow-on and is not reported.
"""

from __future__ import annotations

import difflib

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import LexerThread, Token
from lark.parsers.lalr_analysis import Shift

MAX_ERRORS = 20  # reported per file; the rest are left for the next run
_WINDOW = 8  # tokens a repair must let parse to be taken at once
_SCORE_LIMIT = 40  # tokens looked at to tell two repairs apart
_RESYNC_MIN = 3  # tokens a resumed line must parse (or reach the end of the file)
_QUIET = 3  # tokens to shift after a repair before another error is reported
_MAX_SYNC_TRIES = 60  # lines tried for a resynchronisation before giving up on the rest of the file

_ACCEPT, _FAIL, _OK = "accept", "fail", "ok"


class _Table:
    """The LALR table of one parser, read-only."""

    def __init__(self, parser: lark.Lark, start: str):
        table = parser.parser.parser._parse_table
        self.states = table.states
        self.start_state = table.start_states[start]
        self.end_state = table.end_states[start]
        self.words = {t.name: t.pattern.value for t in parser.terminals if t.pattern.type == "str"}

    def feed(self, stack: list, ttype: str) -> str:
        """Advance `stack` in place by one token, as Lark's LALR loop does (reductions first)."""
        states = self.states
        while True:
            action = states[stack[-1]].get(ttype)
            if action is None:
                return _FAIL
            kind, arg = action
            if kind is Shift:
                stack.append(arg)
                return _OK
            size = len(arg.expansion)
            if size:
                del stack[-size:]
            stack.append(states[stack[-1]][arg.origin.name][1])
            if ttype == "$END" and stack[-1] == self.end_state:
                return _ACCEPT

    def expected(self, stack: list) -> set[str]:
        return {t for t in self.states[stack[-1]] if t.isupper()}

    def trial(self, stack: list, types: list[str], j: int, limit: int = _WINDOW) -> int:
        """How many of the tokens from `j` parse after `stack` (`limit` when that many, or the end, do)."""
        st = list(stack)
        for n, ttype in enumerate(types[j:j + limit]):
            r = self.feed(st, ttype)
            if r == _FAIL:
                return n
            if r == _ACCEPT:
                return limit
        return limit


def _lex(parser: lark.Lark, text: str) -> tuple[list[Token], list[UnexpectedCharacters], bool]:
    """Every token, reading past characters the lexer refuses (each refused one is an error of its own).

    One pass with the parser's own lexer (lark-cython's or Lark's: both take these calls)."""
    lexer = parser.parser.lexer
    make_state = getattr(lexer, "make_lexer_state", None)
    state = make_state(text) if make_state else LexerThread.from_text(lexer, text).state
    tokens: list[Token] = []
    bad: list[UnexpectedCharacters] = []
    while True:
        try:
            tokens.append(lexer.next_token(state, None))
        except EOFError:
            return tokens, bad, False
        except UnexpectedCharacters as e:
            bad.append(e)
            if len(bad) > MAX_ERRORS:  # keep what came before; the rest of the file is not read
                return tokens, bad, True
            p = state.line_ctr.char_pos
            stop = text.find("\n", p) if text[p] == '"' else p + 1  # a string left open runs to its line's end
            state.line_ctr.feed(text[p:len(text) if stop < 0 else stop], True)


def collect(parser: lark.Lark, text: str, start: str = "program") -> tuple[list[UnexpectedInput], bool]:
    """The syntax errors of `text` in order (at most MAX_ERRORS), and whether there were more."""
    table = _Table(parser, start)
    tokens, bad_chars, cut = _lex(parser, text)
    end = Token.new_borrow_pos("$END", "", tokens[-1]) if tokens else Token("$END", "", 0, 1, 1)
    if not cut:
        tokens.append(end)
    types = [t.type for t in tokens]
    line_start = [k == 0 or tokens[k].line != tokens[k - 1].line for k in range(len(tokens))]
    errors: list[UnexpectedInput] = []
    more = False
    last_line = -1
    shifted_since = _QUIET
    stack = [table.start_state]
    i = 0

    def report(e: UnexpectedInput, line: int) -> bool:
        nonlocal last_line, more
        if line == last_line:
            return True
        if len(errors) >= MAX_ERRORS:
            more = True
            return False
        errors.append(e)
        last_line = line
        return True

    while i < len(tokens):
        tok = tokens[i]
        while bad_chars and (tok.type == "$END" or bad_chars[0].pos_in_stream < tok.start_pos):
            e = bad_chars.pop(0)
            if not report(e, e.line):
                return errors, more
            shifted_since = 0  # what follows a refused character is often missing its value
        before = list(stack)  # LALR may reduce before it finds the error: repairs start from here too
        r = table.feed(stack, tok.type)
        if r == _ACCEPT:
            break
        if r == _OK:
            shifted_since += 1
            i += 1
            continue
        if shifted_since >= _QUIET and not report(UnexpectedToken(tok, table.expected(stack)), tok.line):
            return errors, more
        shifted_since = 0
        step = _repair(table, before, stack, tokens, types, line_start, i)
        if step is None:
            break
        stack, i = step
    if cut:
        more = True
    return errors, more


def _repair(table: _Table, before: list, stack: list, tokens: list[Token], types: list[str], line_start: list[bool],
            i: int):
    """(stack, next token) after the best repair at token `i`, or None when nothing lets parsing go on.

    `before` is the stack before token `i` was fed, `stack` after the reductions it caused. The best
    repair lets the most tokens parse; on a tie an insertion beats a replacement (the closest spelling
    first, `modle` -> `model`), which beats dropping the token."""
    at_end = types[i] == "$END"
    text = str(tokens[i])
    candidates = []  # (score, preference, stack, next token)
    for start in (before, stack):
        for x in sorted(table.expected(start)):
            st = list(start)
            if x == "$END" or table.feed(st, x) != _OK:
                continue
            candidates.append((table.trial(st, types, i, _SCORE_LIMIT), 3.0, st, i))  # insert x
            if not at_end:
                like = difflib.SequenceMatcher(None, text, table.words.get(x, "")).ratio()
                candidates.append((table.trial(st, types, i + 1, _SCORE_LIMIT), 1.0 + like, st, i + 1))  # x for it
    if not at_end:
        candidates.append((table.trial(stack, types, i + 1, _SCORE_LIMIT), 0.0, list(stack), i + 1))  # drop it
    best = max(candidates, key=lambda c: (c[0], c[1]), default=None)
    if best is not None and (best[0] >= _WINDOW or best[0] >= _RESYNC_MIN and _past_line(tokens, i, best[3] + best[0])):
        return best[2], best[3]
    resync = _resync(table, stack, types, line_start, i)
    if resync is not None:
        return resync
    if best is not None and best[0] > 0:
        return best[2], best[3]
    return None if at_end else (stack, i + 1)


def _past_line(tokens: list[Token], i: int, stop: int) -> bool:
    """Whether a repair at token `i` that parses up to token `stop` gets past the line of the error."""
    return stop >= len(tokens) or tokens[stop].line > tokens[i].line


def _resync(table: _Table, stack: list, types: list[str], line_start: list[bool], i: int):
    """Resume at the next line that starts an item or closes a block, in the innermost block accepting it."""
    tries = 0
    for j in range(i, len(types)):
        if not (line_start[j] or types[j] in ("RBRACE", "$END")):
            continue
        tries += 1
        if tries > _MAX_SYNC_TRIES:
            return None
        need = min(_RESYNC_MIN, len(types) - j)
        for depth in range(len(stack), 0, -1):
            if table.trial(stack[:depth], types, j, _RESYNC_MIN) >= need:
                return list(stack[:depth]), j
    return None

"""Parse: text -> `ast.Module`, or the syntax diagnostics (each saying what was expected, in words).

The Lark parser is built once and shared; nothing of it changes per call. The file name that spans
carry is per-call state in a context variable, so parses in several threads (or a parse started from
another's callback) never see each other's file.
"""

from __future__ import annotations

import contextvars
import functools
import os
import re
from importlib import resources

import lark
from lark import Token, Transformer, v_args

from l3m.dsl import ast
from l3m.dsl.diagnostics import Diagnostic, did_you_mean
from l3m.dsl.ir import Span
from l3m.dsl.limits import INT_TOO_LARGE, MAX_DEPTH, MAX_INT_BITS, MAX_INT_DIGITS
from l3m.dsl.parser_cache import cached_lark

try:  # Cython-compiled LALR tables and lexer: the same parser, about twice as fast
    import lark_cython

    ACCELERATED = os.environ.get("L3M_PURE_PARSER") != "1"
except ImportError:  # pragma: no cover - the pure-Python parser is the fallback
    ACCELERATED = False

LANGUAGE_VERSION = 1


class ParseFailure(Exception):
    """`diagnostic` is the first error; `diagnostics` all of them (several independent syntax errors)."""

    def __init__(self, diagnostic: Diagnostic, more: list[Diagnostic] | tuple = ()):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic
        self.diagnostics = [diagnostic, *more]


# The file being parsed, for the spans the parse callbacks make: per call (and per thread), never global.
_FILE: contextvars.ContextVar[str] = contextvars.ContextVar("l3m_parse_file", default="<string>")
# What `parse` calls instead, in this context (the language server's incremental parser, which calls `parse`
# again with the hook unset when it cannot reuse anything); None: the ordinary whole-file parse.
PARSE_HOOK: contextvars.ContextVar = contextvars.ContextVar("l3m_parse_hook", default=None)


@functools.cache
def _parser() -> lark.Lark:
    grammar = resources.files("l3m.dsl").joinpath("grammar.lark").read_text()
    # The AST is built while parsing (no intermediate tree): spans come from tokens, not tree metadata.
    options = dict(start=["program", "expr"], parser="lalr", lexer="basic", maybe_placeholders=True,
                   transformer=_TRANSFORMER)
    if ACCELERATED:
        options["_plugins"] = lark_cython.plugins
    return cached_lark(grammar, **options)  # the LALR tables from the user's cache when built before


# Words for the grammar's terminals, so messages never show internal names.
_WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string", "$END": "end of file"}


def _describe(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"'{pattern.value}'" if isinstance(pattern, lark.lexer.PatternStr) else terminal.lower()


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    kind = {"NAME": "name", "INT": "integer", "FLOAT": "number", "STRING": "string"}.get(tok.type)
    return f"{kind} '{text}'" if kind else f"'{text}'"


_SOFT_KEYWORDS = {"'as'", "'weight'", "'head'", "'trunk'", "'preprocessor'", "'postprocessor'", "'train'", "'mesh'",
                  "'log'", "'data'", "'model'", "'loss'", "'metric'", "'keys'", "'let'", "'import'", "'extension'",
                  "'def'", "'optimizer'", "'schedule'", "'default'"}


def _expected_words(expected: set[str]) -> str:
    words = {_describe(t) for t in expected}
    if "a name" in words:  # keywords are names there too: don't list them one by one
        words -= _SOFT_KEYWORDS
    words = sorted(words, key=lambda w: (not w.startswith("'"), w))
    if len(words) > 10:
        words = words[:10] + ["..."]
    if len(words) == 1:
        return words[0]
    return "one of " + ", ".join(words)


# What `_check_depth` reads: a string (escapes as there; unterminated: to the end), a comment, a bracket.
_DEPTH_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|#[^\n]*|[()\[\]{}]', re.DOTALL)


def _max_depth(text: str) -> int:
    """The deepest bracket nesting outside strings and comments, as `_check_depth` counts it, fast."""
    depth = deepest = 0
    for m in _DEPTH_TOKENS.finditer(text):
        ch = m.group()
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _check_depth(text: str, file: str) -> None:
    """Reject absurd nesting before the parser and the tree walkers recurse into it."""
    if _max_depth(text) <= MAX_DEPTH:  # the usual case; the walk below finds where it goes too deep
        return
    depth = 0
    in_str = in_comment = False
    line, col = 1, 0
    prev = ""
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
            in_comment = False
        elif in_comment:
            pass
        elif in_str:
            if ch == '"' and prev != "\\":
                in_str = False
        elif ch == "#":
            in_comment = True
        elif ch == '"':
            in_str = True
        elif ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                span = Span(file, line, col, line, col + 1)
                raise ParseFailure(Diagnostic("E004", f"brackets nest deeper than {MAX_DEPTH} levels", span))
        elif ch in ")]}":
            depth = max(0, depth - 1)
        prev = ch if prev != "\\" else ""


def parse(text: str, file: str = "<string>") -> ast.Module:
    hook = PARSE_HOOK.get()
    if hook is not None:
        return hook(text, file)
    _check_depth(text, file)
    reset = _FILE.set(file)
    try:
        return _parser().parse(text, start="program")
    except lark.exceptions.UnexpectedInput as e:
        first = _syntax_diagnostic(e, file)
        raise ParseFailure(first, _other_errors(text, file, first)) from None
    except RecursionError:
        raise ParseFailure(Diagnostic("E004", "the file nests too deeply to compile", Span(file, 1, 1, 1, 2))) from None
    finally:
        _FILE.reset(reset)


def _other_errors(text: str, file: str, first: Diagnostic) -> list[Diagnostic]:
    """The syntax errors after the first one that are not its follow-ons (`l3m.dsl.recover`)."""
    from l3m.dsl import recover

    try:
        found, more = recover.collect(_parser(), text)
    except Exception:  # noqa: BLE001 - best effort: the first error alone is still right
        return []
    diags = [_syntax_diagnostic(e, file) for e in found]
    pos = (first.span.line, first.span.col) if first.span else (0, 0)
    rest = [d for d in diags if d.span and (d.span.line, d.span.col) > pos]
    if more or len(rest) + 1 > recover.MAX_ERRORS:
        rest = rest[:recover.MAX_ERRORS - 1]
        last = rest[-1] if rest else first
        last.notes.append((f"stopped after {recover.MAX_ERRORS} syntax errors; fix these and run again", None))
    return rest


def parse_expr(text: str, file: str = "<override>") -> ast.Expr:
    """An expression on its own (command-line override values)."""
    _check_depth(text, file)
    reset = _FILE.set(file)
    try:
        return _parser().parse(text, start="expr")
    except lark.exceptions.UnexpectedInput as e:
        raise ParseFailure(_syntax_diagnostic(e, file)) from None
    except RecursionError:
        raise ParseFailure(Diagnostic("E004", "the value nests too deeply", None)) from None
    finally:
        _FILE.reset(reset)


def _syntax_diagnostic(e: lark.exceptions.UnexpectedInput, file: str) -> Diagnostic:
    line, col = max(getattr(e, "line", 1) or 1, 1), max(getattr(e, "column", 1) or 1, 1)
    if isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        found = _describe_token(tok)
        width = max(1, len(str(tok))) if tok.type != "$END" else 1
        if tok.type == "$END":
            line, col = getattr(tok, "line", line) or line, getattr(tok, "column", col) or col
        span = Span(file, line, col, line, col + width)
        msg = f"unexpected {found}; expected {_expected_words(set(e.expected))}"
        help_ = _hint(tok, set(e.expected))
        return Diagnostic("E001", msg, span, help=help_)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = e.char
        shown = repr(ch) if not ch.isprintable() else f"'{ch}'"
        msg = f"unexpected character {shown}"
        allowed = getattr(e, "allowed", None)
        if allowed:
            msg += f"; expected {_expected_words(set(allowed))}"
        help_ = "strings are written in double quotes" if ch == "'" else None
        return Diagnostic("E001", msg, Span(file, line, col, line, col + 1), help=help_)
    return Diagnostic("E001", "unexpected end of the file", Span(file, line, col, line, col + 1))


def _hint(tok: Token, expected: set[str]) -> str | None:
    if tok.type == "NAME":
        keywords = [w.strip("'") for w in map(_describe, expected) if w.startswith("'") and w[1:-1].isidentifier()]
        close = did_you_mean(str(tok), keywords)
        if close:
            return close
    if "__ANON_0" in expected or any(_describe(t) == "'->'" for t in expected):
        return "bind keys with `inputs -> outputs`, e.g. `tokens -> x`"
    if tok.type == "NAME" and any(_describe(t) == "'l3m'" for t in expected):
        return "a .l3m file starts with its language version: `l3m 1`"
    return None


def _span_tok(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))


def _unescape(raw: str) -> str:
    out, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _ToAst(Transformer):
    """Lark tree -> ast dataclasses. Every rule below is one grammar rule.

    One instance serves every parse; it holds no per-call state (the file name is `_FILE`'s)."""

    @property
    def file(self) -> str:
        return _FILE.get()

    def _tok(self, tok: Token) -> Span:
        return _span_tok(_FILE.get(), tok)

    @staticmethod
    def _join(a: Span, b: Span) -> Span:
        return Span(a.file, a.line, a.col, b.end_line, b.end_col)

    # ---------------------------------------------------------------- expressions
    def _int(self, tok: Token) -> int:
        """An INT token's value; absurdly long literals are refused before Python converts them."""
        digits = str(tok).replace("_", "").lstrip("0") or "0"
        if len(digits) > MAX_INT_DIGITS:
            raise ParseFailure(Diagnostic("E430", f"this integer has {len(digits):,} digits; integer literals are "
                                          f"limited to {MAX_INT_DIGITS}", self._tok(tok)))
        value = int(digits)
        if value.bit_length() > MAX_INT_BITS:
            raise ParseFailure(Diagnostic("E430", f"this integer has {value.bit_length():,} bits; {INT_TOO_LARGE}",
                                          self._tok(tok)))
        return value

    @v_args(inline=True)
    def int_(self, tok):
        return ast.Const(self._tok(tok), self._int(tok))

    @v_args(inline=True)
    def float_(self, tok):
        return ast.Const(self._tok(tok), float(str(tok).replace("_", "")))

    @v_args(inline=True)
    def string(self, tok):
        return ast.Str(self._tok(tok), _unescape(str(tok)[1:-1]))

    @v_args(inline=True)
    def true(self, tok):
        return ast.Const(self._tok(tok), True)

    @v_args(inline=True)
    def false(self, tok):
        return ast.Const(self._tok(tok), False)

    @v_args(inline=True)
    def null(self, tok):
        return ast.Const(self._tok(tok), None)

    def list_(self, children):
        bracket, *items = children
        return ast.ListExpr(self._tok(bracket), [i for i in items if i is not None])

    @v_args(inline=True)
    def ref(self, parts):
        return ast.Ref(self._span_parts(parts), [str(p) for p in parts])

    def qualname(self, toks):
        return toks  # list of NAME tokens

    def _bin(op):  # noqa: N805 - a rule factory, not a method
        @v_args(inline=True)
        def rule(self, left, right):
            return ast.BinOp(self._join(left.span, right.span), op, left, right)

        return rule

    add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")
    floordiv, mod, pow = _bin("//"), _bin("%"), _bin("**")

    @v_args(inline=True)
    def neg(self, minus, operand):
        return ast.Neg(self._join(self._tok(minus), operand.span), operand)

    @v_args(inline=True)
    def pos(self, operand):
        return operand

    # ---------------------------------------------------------------- calls and bindings
    def call(self, children):
        parts, *args = children
        return ast.CallExpr(self._span_parts(parts), [str(p) for p in parts], [a for a in args if a is not None])

    def _span_parts(self, parts) -> Span:
        first, last = parts[0], parts[-1]
        return Span(_FILE.get(), first.line, first.column, last.end_line, last.end_column)

    @v_args(inline=True)
    def pos_arg(self, value):
        return ast.Arg(None, value, value.span)

    @v_args(inline=True)
    def kw_arg(self, name, value):
        return ast.Arg(str(name), value, self._tok(name))

    def bindings(self, children):
        reads, writes = children
        return (reads or [], writes)

    def pos_keys(self, keys):
        return keys

    def named_keys(self, keys):
        return keys

    def key(self, children):
        if len(children) == 1:
            (name,) = children
            return ast.KeyRef(str(name), self._tok(name))
        bang, name = children
        return ast.KeyRef(str(name), self._tok(name), overwrite=bang is not None)

    def named_key(self, children):
        if len(children) == 2:
            port, name = children
            bang = None
        else:
            port, bang, name = children
        return ast.KeyRef(str(name), self._tok(name), port=str(port), overwrite=bang is not None)

    # ---------------------------------------------------------------- declarations
    @v_args(inline=True)
    def node(self, name, call, bindings):
        reads, writes = bindings
        return ast.NodeDecl(str(name), self._tok(name), call, reads, writes)

    @v_args(inline=True)
    def loss(self, name, call, bindings, weight):
        reads, writes = bindings
        return ("loss", ast.NodeDecl(str(name), self._tok(name), call, reads, writes, weight))

    @v_args(inline=True)
    def metric(self, name, call, bindings):
        reads, writes = bindings
        return ("metric", ast.NodeDecl(str(name), self._tok(name), call, reads, writes))

    @v_args(inline=True)
    def name(self, tok):
        return tok

    @v_args(inline=True)
    def stage_name(self, tok):
        return tok

    @v_args(inline=True)
    def section_name(self, tok):
        return tok

    def stage(self, children):
        name, *nodes = children
        return ast.StageDecl(str(name), self._tok(name), nodes)

    def model(self, children):
        name, *items = children
        m = ast.ModelDecl(str(name), self._tok(name))
        for item in items:
            m.order.append(item)
            (m.stages if isinstance(item, ast.StageDecl) else m.models).append(item)
        return m

    @v_args(inline=True)
    def model_inst(self, name, call, bindings):
        reads, writes = bindings
        return ast.ModelInst(str(name), self._tok(name), call, reads, writes)

    @v_args(inline=True)
    def param(self, name, default):
        return ast.Param(str(name), self._tok(name), default)

    def ports(self, names):
        return [(str(n), self._tok(n)) for n in names]

    def def_(self, children):
        name = children[0]
        rest = children[1:]
        params = []
        while rest and (isinstance(rest[0], ast.Param) or rest[0] is None):
            p = rest.pop(0)
            if p is not None:
                params.append(p)
        inputs, outputs, *items = rest
        body = self.model([name, *items])
        return ast.DefDecl(str(name), self._tok(name), params, inputs or [], outputs, body)

    @v_args(inline=True)
    def let(self, name, value):
        return ast.LetDecl(str(name), self._tok(name), value)

    @v_args(inline=True)
    def import_(self, path, alias):
        return ast.ImportDecl(_unescape(str(path)[1:-1]), self._tok(path), str(alias), self._tok(alias))

    @v_args(inline=True)
    def extension(self, module):
        return ast.ExtensionDecl(_unescape(str(module)[1:-1]), self._tok(module))

    def keys(self, decls):
        return ("keys", decls)

    @v_args(inline=True)
    def keydecl(self, name, dtype, shape):
        return ast.KeyDeclAst(str(name), self._tok(name), str(dtype), shape)

    def shape(self, dims):
        return [self._int(d) if d.type == "INT" else str(d) for d in dims[1:] if d is not None]

    def data(self, items):
        # Settings lines (`on_error = skip`) form the `data` settings section; the rest are sources.
        settings = [i for i in items if isinstance(i, ast.Setting)]
        nodes = [i for i in items if not isinstance(i, ast.Setting)]
        if settings:
            return [("data", nodes), ast.SectionDecl("data", settings[0].span, settings)]
        return ("data", nodes)

    def default_(self, children):
        (call,) = children
        return ast.DefaultDecl(call, call.span)

    @v_args(inline=True)
    def optimizer(self, call):
        return ("optimizer", call)

    @v_args(inline=True)
    def schedule(self, call):
        return ("schedule", call)

    @v_args(inline=True)
    def setting(self, name, value):
        return ast.Setting(str(name), self._tok(name), value)

    def section(self, children):
        name, *settings = children
        return ast.SectionDecl(str(name), self._tok(name), [s for s in settings if s is not None])

    @v_args(inline=True)
    def header(self, version):
        return version

    def program(self, children):
        version, *items = children
        digits = str(version).replace("_", "").lstrip("0") or "0"
        if len(digits) > 9:
            raise ParseFailure(Diagnostic("E003", f"this is l3m language version {LANGUAGE_VERSION}; the file asks "
                                          f"for a version of {len(digits):,} digits", self._tok(version)))
        mod = ast.Module(self.file, int(digits), self._tok(version))
        flat = []
        for item in items:
            flat.extend(item if isinstance(item, list) else [item])
        for item in flat:
            if isinstance(item, ast.LetDecl):
                mod.lets.append(item)
            elif isinstance(item, ast.ImportDecl):
                mod.imports.append(item)
            elif isinstance(item, ast.ExtensionDecl):
                mod.extensions.append(item)
            elif isinstance(item, (ast.ModelDecl, ast.ModelInst)):
                mod.models.append(item)
            elif isinstance(item, ast.DefDecl):
                mod.defs.append(item)
            elif isinstance(item, ast.SectionDecl):
                mod.sections.append(item)
            elif isinstance(item, ast.DefaultDecl):
                mod.defaults.append(item)
            else:
                kind, value = item
                target = {"keys": mod.keys, "data": mod.data, "loss": mod.losses, "metric": mod.metrics,
                          "optimizer": mod.optimizer, "schedule": mod.schedule}[kind]
                if isinstance(value, list):
                    target.extend(value)
                else:
                    target.append(value)
        return mod


_TRANSFORMER = _ToAst()


# ----------------------------------------------------------------------------- pieces (incremental parsing)
@functools.cache
def _piece_parser() -> lark.Lark:
    """The same grammar with a file's pieces as start rules; tables of its own, so the whole-file parser's
    tables (and its error messages) stay exactly as they are."""
    grammar = resources.files("l3m.dsl").joinpath("grammar.lark").read_text()
    options = dict(start=["program", "item", "node"], parser="lalr", lexer="basic", maybe_placeholders=True,
                   transformer=_TRANSFORMER)
    if ACCELERATED:
        options["_plugins"] = lark_cython.plugins
    return cached_lark(grammar, **options)


@functools.cache
def item_keywords() -> frozenset[str]:
    """The words a top-level item can start with, read from the grammar's tables (not a list kept by hand)."""
    pp = _piece_parser()
    table = pp.parser.parser._parse_table
    words = {t.name: t.pattern.value for t in pp.terminals if t.pattern.type == "str"}
    return frozenset(words[k] for k in table.states[table.start_states["item"]] if k in words)


def parse_piece(text: str, file: str, start: str):
    """One piece of a file alone: the header (`program`), a top-level `item` or a stage's `node`; what that
    rule's callback returns. The caller pads `text` (leading newlines) so that positions are the file's.
    Raises lark's UnexpectedInput or ParseFailure; no recovery, no messages: the caller parses the whole
    file when a piece fails."""
    reset = _FILE.set(file)
    try:
        return _piece_parser().parse(text, start=start)
    finally:
        _FILE.reset(reset)


def assemble(file: str, version: Token, items: list) -> ast.Module:
    """The module that `program` would build from these parsed items (the items are not copied)."""
    reset = _FILE.set(file)
    try:
        return _TRANSFORMER.program([version, *items])
    finally:
        _FILE.reset(reset)

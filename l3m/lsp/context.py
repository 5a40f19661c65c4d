"""Where the cursor stands, read from the text before it (which usually does not parse while typing):
inside which call's parentheses, which section's braces, after which keyword, in a port list.

Only tokens matter: white space and newlines carry no meaning in the language, comments and strings
are skipped, and an unclosed bracket simply stays open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"(?P<comment>#[^\n]*)|(?P<string>\"(?:[^\"\\\n]|\\.)*\")|(?P<open_string>\"(?:[^\"\\\n]|\\.)*$)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[0-9][0-9_.eE]*)|(?P<op>->|\*\*|//|[{}()\[\],:=.+\-*/%!])"
    r"|(?P<ws>\s+)|(?P<other>.)", re.S)

_OPERATORS = ("+", "-", "*", "/", "//", "%", "**")
STAGES = ("preprocessor", "trunk", "postprocessor", "head")
SECTIONS = ("train", "mesh", "log")


@dataclass
class Frame:
    """An open bracket and what stood before it."""

    bracket: str
    before: list[str]  # the tokens of this level before the bracket (the statement so far)


@dataclass
class Context:
    """kind: none | top | section_key | section_value | type | arg | value | key | port | stage_item | keys_decl."""

    kind: str
    prefix: str = ""  # the part of a name already typed
    section: str | None = None  # section_key / section_value: train, mesh, log, data
    setting: str | None = None  # section_value: the setting being given
    kinds: tuple[str, ...] = ()  # type: registry kinds wanted
    call: str | None = None  # arg / value / port: the called name
    arg: str | None = None  # value: the argument being given
    given: list[str] = field(default_factory=list)  # arg: names already given in this call
    template: bool = False  # type: a template (`model x = `)


def _tokens(text: str) -> tuple[list[str], bool]:
    """The tokens of `text`, and whether it ends inside a string or comment."""
    toks: list[str] = []
    inside = False
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        inside = kind in ("comment", "open_string")
        if kind in ("ws", "comment", "open_string"):
            continue
        toks.append("STR" if kind == "string" else m.group())
    if text and text[-1] == "\n":
        inside = False
    return toks, inside


def _is_name(tok: str) -> bool:
    return bool(tok) and (tok[0].isalpha() or tok[0] == "_")


def _qualname_before(toks: list[str]) -> str | None:
    """`a.b` at the end of `toks` (what stands before an opening parenthesis), if a name stands there."""
    if not toks or not _is_name(toks[-1]):
        return None
    parts = [toks[-1]]
    i = len(toks) - 2
    while i >= 1 and toks[i] == "." and _is_name(toks[i - 1]):
        parts.insert(0, toks[i - 1])
        i -= 2
    return ".".join(parts)


def _statement(level: list[str]) -> list[str]:
    """The tokens of the current statement at this level: from the last `name :` or keyword on."""
    for i in range(len(level) - 2, -1, -1):
        if level[i + 1] == ":" and _is_name(level[i]):
            start = i - 1 if i >= 1 and level[i - 1] in ("loss", "metric") else i
            return level[start:]
    return level


def _call_closed(stmt: list[str]) -> tuple[str | None, bool]:
    """(the called name, whether its parentheses have closed) in a node statement `name : Type ( ... )`."""
    if ":" not in stmt:
        return None, False
    after = stmt[stmt.index(":") + 1:]
    if "()" not in after:
        return None, False
    return _qualname_before(after[:after.index("()")]), True


def analyse(text: str) -> Context:
    """The completion context at the end of `text` (the document up to the cursor)."""
    m = re.search(r"[A-Za-z_][A-Za-z0-9_]*$", text)
    prefix = m.group() if m else ""
    body = text[: len(text) - len(prefix)]
    toks, inside = _tokens(body)
    if inside:
        return Context("none")
    stack: list[Frame] = []
    level: list[str] = []  # tokens at the current bracket level
    for tok in toks:
        if tok in ("(", "[", "{"):
            stack.append(Frame(tok, level))
            level = []
        elif tok in (")", "]", "}"):
            if stack:
                frame = stack.pop()
                level = frame.before + [{"(": "()", "[": "[]", "{": "{}"}[frame.bracket]]
            else:
                level = []
        else:
            level.append(tok)
    ctx = _classify(stack, level)
    ctx.prefix = prefix
    return ctx


def _classify(stack: list[Frame], level: list[str]) -> Context:
    last = level[-1] if level else None
    if not stack:
        return _statement_context(level, top=True)
    frame = stack[-1]
    before = frame.before
    if frame.bracket == "(":
        callee = _qualname_before(before)
        if callee is not None:
            if last == "=" and len(level) >= 2 and _is_name(level[-2]):
                return Context("value", call=callee, arg=level[-2])
            if last in (None, ","):
                given = [level[i - 1] for i in range(1, len(level)) if level[i] == "=" and _is_name(level[i - 1])]
                return Context("arg", call=callee, given=given)
            return Context("value", call=callee)
        if before and before[-1] in ("()", "->"):  # named bindings: `(port = key)`
            if last == "=":
                return Context("key")
            call, _closed = _call_closed(_statement(before))
            return Context("port", call=call, given=[level[i - 1] for i in range(1, len(level)) if level[i] == "="])
        return Context("value")
    if frame.bracket == "[":
        return Context("value")
    # Inside braces: what opened them?
    owner = _brace_owner(before)
    if owner in SECTIONS or owner == "data":
        stmt = _statement(level)
        if owner == "data" and ":" in stmt:
            return _node_context(stmt, ("source", "generator"))
        if last == "=" and len(level) >= 2:
            return Context("section_value", section=owner, setting=level[-2])
        if last in _OPERATORS:
            return Context("value")
        return Context("section_key", section=owner)
    if owner in STAGES:
        stmt = _statement(level)
        if ":" in stmt:
            return _node_context(stmt, ("block",))
        return Context("none")
    if owner == "keys":
        return Context("keys_decl") if last == ":" else Context("none")
    if owner in ("model", "def"):
        stmt = _statement(level) if level else []
        if "=" in stmt and stmt and stmt[0] == "model":
            return _template_context(stmt)
        return Context("stage_item")
    return Context("none")


def _brace_owner(before: list[str]) -> str | None:
    """The keyword that opened a brace: a section, `data`, `keys`, a stage, `model NAME`, `def NAME(...) ... ->`."""
    if not before:
        return None
    if before[-1] in SECTIONS or before[-1] in STAGES or before[-1] in ("data", "keys"):
        return before[-1]
    if len(before) >= 2 and before[-2] == "model":
        return "model"
    if "def" in before[-12:] or (before and before[-1] not in ("=",) and "def" in before):
        return "def"
    return None


def _node_context(stmt: list[str], kinds: tuple[str, ...]) -> Context:
    """Inside `name : Type(...) reads -> writes`: the type after `:`, keys after the call."""
    last = stmt[-1]
    if last == ":":
        return Context("type", kinds=kinds)
    call, closed = _call_closed(stmt)
    if closed and last in ("()", "->", ",", "!"):
        return Context("key", call=call)
    if last == "weight" or (len(stmt) >= 2 and stmt[-2] == "weight"):
        return Context("value")
    return Context("none")


def _template_context(stmt: list[str]) -> Context:
    if stmt[-1] == "=":
        return Context("type", template=True)
    if "()" in stmt and stmt[-1] in ("()", "->", ","):
        return Context("key")
    return Context("none")


def _statement_context(level: list[str], top: bool) -> Context:
    last = level[-1] if level else None
    stmt = _statement(level)
    if stmt and stmt[0] in ("loss", "metric") and ":" in stmt:
        return _node_context(stmt, ("loss",) if stmt[0] == "loss" else ("metric",))
    if last in ("optimizer", "schedule"):
        return Context("type", kinds=(last,))
    if len(level) >= 3 and level[-3] == "model" and last == "=":
        return Context("type", template=True)
    if len(level) >= 3 and "model" in level[-6:] and "=" in level[-6:]:
        tail = level[level.index("=", max(0, len(level) - 6)) - 2:] if "=" in level[-6:] else []
        if tail and tail[0] == "model":
            return _template_context(tail)
    if last == "=" and len(level) >= 3 and level[-3] == "let":
        return Context("value")
    if last in (None, "()", "{}", "[]", "STR") or (last and _is_name(last) and len(level) >= 2
                                                   and level[-2] not in ("let", "model", "def", "as", "loss",
                                                                         "metric", "import", "extension")):
        return Context("top")
    if last and (last[0].isdigit() or last in ("true", "false", "null")):
        return Context("top")
    if last in _OPERATORS or last == "=":
        return Context("value")
    return Context("none")

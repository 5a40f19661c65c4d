"""The language server's memo of node calls: a node whose call is the same syntax-tree object as in the
last compile (the incremental parser reuses unchanged pieces) is not resolved again when nothing it can
read has changed; its result and its diagnostics are replayed.

What resolving a node's call reads: the call's own syntax, its place (path, kinds, the template
instances around it), the main file's lets (all evaluated before any node) and the template's
parameters, and the registry. The memo is used only where that is all: no command-line overrides, no
`default` statements, no extension entries, no imports, the node written in the main file, and every let
and parameter a plain value (numbers, strings, booleans, None, lists of them), compared with its type.
Replaying a result re-reports its diagnostics through the reporter (so instance notes and the "said
once" rule apply as they did) and re-counts what the evaluator built (its size limit). A node that only
moved (lines inserted or deleted above it: the incremental parser says from where) is replayed moved
when every position in its result lies within the node itself and no message names a position. A test
compares the diagnostics with a full compile's after edits.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from l3m.dsl.ir import Span
from l3m.dsl.resolver.calls import resolve_call
from l3m.dsl.resolver.models import NODE_CALL_HOOK

_ATOMS = (str, int, float, bool, type(None), Span)


class _NotPlain(Exception):
    pass


def _plain(value: Any) -> Any:
    """A hashable fingerprint of a plain value, its types included (1, 1.0 and True differ)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_plain(v) for v in value))
    if isinstance(value, (str, int, float, bool, type(None))):
        return (type(value).__name__, value)
    raise _NotPlain


def _copy(obj: Any) -> Any:
    """A copy of a resolved call that shares only immutable parts (so later stages cannot change the memo)."""
    if isinstance(obj, _ATOMS):
        return obj
    if isinstance(obj, list):
        return [_copy(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_copy(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = object.__new__(type(obj))
        object.__setattr__(out, "__dict__", {k: _copy(v) for k, v in obj.__dict__.items()})
        return out
    raise _NotPlain


class ResolveMemo:
    """Node calls of the last compile, by call object and everything else they read."""

    def __init__(self) -> None:
        self.last: dict[tuple, tuple] = {}
        self.now: dict[tuple, tuple] = {}
        self.stats = {"reused": 0, "moved": 0, "resolved": 0, "bypassed": 0}
        self._lets: tuple[int, Any] | None = None  # (id of the compile's tools, fingerprint of the main lets)
        self.moved: dict[int, tuple] = {}  # `IncrementalParser.moved` of this compile

    @contextlib.contextmanager
    def active(self, moved: dict[int, tuple] | None = None) -> Iterator[None]:
        """One compile: node calls go through the memo; afterwards it keeps only what this compile used.
        `moved`: the nodes the parse moved (`IncrementalParser.moved`)."""
        self.now, self._lets, self.moved = {}, None, moved if moved is not None else {}
        token = NODE_CALL_HOOK.set(self.resolve)
        try:
            yield
        finally:
            NODE_CALL_HOOK.reset(token)
            self.last, self.now, self._lets = self.now, {}, None

    def _key(self, c: Any, env: Any, kinds: tuple, path: str, t: Any) -> tuple | None:
        """Everything the call's resolution reads; None where the memo does not apply (or the resolver's
        parts are not what this module knows: a renamed attribute turns the memo off, never wrong)."""
        try:
            scope = env.scope
            if (t.overrides.by_path or (t.defaults is not None and t.defaults.by_arg) or t.catalog.static
                    or scope is not t.evaluator.main or scope.imports or not isinstance(t.evaluator.built, int)):
                return None
            if self._lets is None or self._lets[0] != id(t):
                lets = (tuple(sorted((k, d.span, getattr(d.value, "span", None)) for k, d in scope.lets.items())),
                        tuple(sorted(scope.failed)), tuple(sorted((k, _plain(v)) for k, v in scope.values.items())))
                self._lets = (id(t), lets)
            params = tuple((k, _plain(v)) for k, v in env.params.items())
            return (id(c), path, kinds, tuple(t.report.instances), self._lets[1], params,
                    tuple(env.param_spans.items()))
        except (_NotPlain, AttributeError, TypeError):
            return None

    def _moved(self, c: Any, key: tuple) -> tuple | None:
        """The last compile's entry of the node `c` was moved from, moved with it; None when there is none
        or its result holds a position outside the node (or a message names one)."""
        m = self.moved.get(id(c))
        if m is None or m[0] is not c:
            return None
        _, old_c, lines, old = m
        hit = self.last.get((id(old_c), *key[1:]))
        if hit is None or hit[0] is not old_c:
            return None
        _, call, said, built = hit
        file = old_c.span.file
        try:
            moved_said = []
            for code, message, span, help_, notes in said:
                texts = [message, help_ or ""] + [n[0] for n in notes or ()]
                if any(f"{file}:" in x for x in texts):
                    return None
                moved_notes = [(n[0], _moved_span(n[1], file, lines, old)) for n in notes] if notes else None
                moved_said.append((code, message, _moved_span(span, file, lines, old), help_, moved_notes))
            moved_call = _moved_value(call, file, lines, old)
        except (_NotPlain, AttributeError, TypeError):
            return None
        self.stats["moved"] += 1
        return (c, moved_call, moved_said, built)

    def resolve(self, c: Any, env: Any, kinds: tuple, path: str, t: Any) -> Any:
        """`resolve_call(c, env, kinds, path, t)`, replayed when it can be."""
        key = self._key(c, env, kinds, path, t)
        if key is None:
            self.stats["bypassed"] += 1
            return resolve_call(c, env, kinds, path, t)
        hit = self.now.get(key) or self.last.get(key)
        if hit is None or hit[0] is not c:
            hit = self._moved(c, key)
        if hit is not None:
            _, call, said, built = hit
            for args in said:
                t.report.error(*args)
            t.evaluator.built += built
            self.now[key] = hit
            self.stats["reused"] += 1
            return _copy(call)
        report = t.report
        said: list[tuple] = []
        error = report.error

        def recording(*args: Any, **kwargs: Any) -> None:
            said.append(_positional(*args, **kwargs))
            error(*args, **kwargs)

        built = t.evaluator.built
        report.error = recording
        try:
            call = resolve_call(c, env, kinds, path, t)
        finally:
            del report.error  # the class's method again
        self.stats["resolved"] += 1
        with contextlib.suppress(_NotPlain):
            self.now[key] = (c, _copy(call), said, t.evaluator.built - built)
        return call


def _moved_span(span: Any, file: str, lines: int, old: tuple[int, int]) -> Any:
    """`span` moved by `lines`; raises _NotPlain when it is not within the old node's lines."""
    if span is None:
        return None
    if span.file != file or not (old[0] <= span.line <= old[1] and old[0] <= span.end_line <= old[1]):
        raise _NotPlain
    return dataclasses.replace(span, line=span.line + lines, end_line=span.end_line + lines)


def _moved_value(obj: Any, file: str, lines: int, old: tuple[int, int]) -> Any:
    """A stored call moved by `lines` (a copy); every span in it must lie within the old node."""
    if isinstance(obj, Span):
        return _moved_span(obj, file, lines, old)
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, list):
        return [_moved_value(x, file, lines, old) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_moved_value(x, file, lines, old) for x in obj)
    if isinstance(obj, dict):
        return {k: _moved_value(v, file, lines, old) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = object.__new__(type(obj))
        object.__setattr__(out, "__dict__", {k: _moved_value(v, file, lines, old) for k, v in obj.__dict__.items()})
        return out
    raise _NotPlain


def _positional(code: str, message: str, span: Any, help: str | None = None, notes: Any = None) -> tuple:
    """A `Reporter.error` call's arguments, positionally, notes copied (the caller may reuse its list)."""
    return (code, message, span, help, list(notes) if notes else None)

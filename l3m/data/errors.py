"""Bad data: one exception class that names the file and the place in it, and the loader's policy.

A source raises `DataError` when a sample cannot be read (a malformed JSONL line, an undecodable
image, a truncated tar member): the message is one line, `<file>:<line>: ...` or
`<file>@<byte offset>: ...`, so that the CLI can print it as is and stop with exit 1 (it is a
`ValueError`, which the trainer already reports without a traceback, before any checkpoint is
touched). With `data { on_error = skip }` the loader replaces such a sample instead (see
`l3m.data.loader`) and counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TypeVar

T = TypeVar("T")

# What a source does with bad data it finds while indexing (`scan_policy`); "raise" unless told.
_SCAN_POLICY: ContextVar[str] = ContextVar("l3m_scan_policy", default="raise")

# The exceptions that mean "this sample's bytes are bad", as opposed to a bug in l3m.
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, SyntaxError)


class DataError(ValueError):
    """A sample that cannot be read; `where` names the file and the offset or line in it."""

    def __init__(self, where: str, problem: str = "") -> None:
        self.where, self.problem = where, problem
        text = f"{where}: {problem}" if problem else where
        super().__init__(" ".join(text.split()))  # one line, whatever the underlying error said


class DataErrorLimit(DataError):
    """With `on_error = skip`: more bad samples than `max_error_fraction` allows."""


def guarded(where: str, what: str, fn: Callable[[], T]) -> T:
    """`fn()`, with a decoding failure turned into a `DataError` naming `where` ("cannot decode image: ...")."""
    try:
        return fn()
    except DataError:
        raise
    except DECODE_ERRORS as e:
        raise DataError(where, f"{what}: {type(e).__name__}: {e}") from None


def set_scan_policy(on_error: str) -> Token:
    """`scan_policy` for code that cannot indent a block: the token goes to `reset_scan_policy`."""
    return _SCAN_POLICY.set(on_error)


def reset_scan_policy(token: Token) -> None:
    _SCAN_POLICY.reset(token)


@contextmanager
def scan_policy(on_error: str) -> Iterator[None]:
    """Sources built (and indexed) inside this block drop what their scan cannot read when
    `on_error` is "skip" (a corrupt tar shard from the bad header on, a malformed JSONL line that
    a byte stream must parse), noting it in their `scan_errors` for the loader to count."""
    token = _SCAN_POLICY.set(on_error)
    try:
        yield
    finally:
        _SCAN_POLICY.reset(token)


def scan_error(error: DataError, sink: list[str]) -> None:
    """Raise `error`, or under `scan_policy("skip")` note it in `sink` and go on."""
    if _SCAN_POLICY.get() != "skip":
        raise error
    sink.append(str(error))

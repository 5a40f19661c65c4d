"""The one binding routine: given items (call arguments, or keys bound to ports) -> named slots
(constructor or template parameters, or ports). Positional items fill the positional slots in
order, then a variadic slot; named items go by name; a slot is filled once (a variadic one any
number of times); required slots left empty are reported. Only the wording differs between
arguments and ports, so it is passed in (`Wording`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple, Protocol, TypeVar

from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Span
from l3m.dsl.resolver.context import Reporter

T = TypeVar("T", bound="Item")

Said = tuple[str, str, str | None]  # (code, message, help)


class Slot(NamedTuple):
    """Something an item can be bound to: a parameter or a port."""

    name: str
    positional: bool = True  # may be filled by position
    required: bool = True
    variadic: bool = False  # takes every positional item left over, and any number of named ones


class Item(Protocol):
    """What is bound: an `ast.Arg` (`name`) or an `ast.KeyRef` (`port`); None: by position."""

    span: Span


@dataclass(frozen=True)
class Wording:
    """What a binding says when it fails; everything else is the same for arguments and ports."""

    too_many: Callable[[int, int], Said]  # (positional slots, positional items)
    unknown: Callable[[str, list[str]], Said]  # (the name, the slots' names)
    twice: Callable[[str], Said]
    missing: Callable[[str], Said]
    # An undeclared name is accepted (a constructor's **kwargs).
    open: bool = False
    # Report each item beyond the positional slots (False: only the first, with the count).
    each_extra: bool = False


def bind(given: Sequence[T], slots: Sequence[Slot], words: Wording, report: Reporter,
         name: Callable[[T], str | None] = attrgetter("name")) -> list[tuple[str, T]]:
    """(slot name, item) for every item that binds: positional items first, then named ones, each
    in the order written. `name` reads an item's name (None: positional). Errors are reported and
    the offending item is left out (the first of two items for one slot wins)."""
    if not given:
        return []
    fixed = [s for s in slots if s.positional and not s.variadic]
    variadic = next((s for s in slots if s.variadic), None)
    names = [s.name for s in slots]
    out: list[tuple[str, T]] = []
    taken: set[str] = set()
    names_given = [name(g) for g in given]
    positional = [g for g, n in zip(given, names_given) if n is None]
    for i, g in enumerate(positional):
        if i < len(fixed):
            out.append((fixed[i].name, g))
            taken.add(fixed[i].name)
        elif variadic is not None:
            out.append((variadic.name, g))
        else:
            report.error(*_split(words.too_many(len(fixed), len(positional)), g.span))
            if not words.each_extra:
                break
    for g, n in zip(given, names_given):
        if n is None:
            continue
        if n not in names and not words.open:
            report.error(*_split(words.unknown(n, names), g.span))
            continue
        if n in taken and not (variadic is not None and n == variadic.name):
            report.error(*_split(words.twice(n), g.span))
            continue
        out.append((n, g))
        taken.add(n)
    return out


def report_unbound(slots: Iterable[Slot], bound: Iterable[str], words: Wording, span: Span,
                   report: Reporter) -> None:
    """Each required slot that nothing was bound to, reported at `span` (the call)."""
    bound = set(bound)
    for s in slots:
        if s.required and s.name not in bound:
            report.error(*_split(words.missing(s.name), span))


def _split(said: Said, span: Span) -> tuple[str, str, Span, str | None]:
    code, message, help = said
    return code, message, span, help


# ---------------------------------------------------------------------- the wordings
def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def argument_words(owner: str, open: bool = False) -> Wording:
    """A registered constructor's arguments (`owner` is its name)."""
    return Wording(
        too_many=lambda n, m: ("E206", f"'{owner}' takes {_plural(n, 'positional argument')}, {m} given", None),
        unknown=lambda a, names: ("E203", f"'{owner}' has no argument '{a}'",
                                  did_you_mean(a, names) or f"its arguments are: {', '.join(names) or 'none'}"),
        twice=lambda a: ("E207", f"argument '{a}' is given twice", None),
        missing=lambda p: ("E204", f"'{owner}' needs the argument '{p}'", None),
        open=open)


def template_argument_words(template: str) -> Wording:
    """A template's parameters."""
    return Wording(
        too_many=lambda n, m: ("E206", f"template '{template}' takes {n} arguments, {m} given", None),
        unknown=lambda a, names: ("E203", f"template '{template}' has no parameter '{a}'", did_you_mean(a, names)),
        twice=lambda a: ("E207", f"argument '{a}' is given twice", None),
        missing=lambda p: ("E204", f"template '{template}' needs the argument '{p}'", None))


def port_words(owner: str, direction: str, slots: Sequence[Slot]) -> Wording:
    """A registered node's input or output ports (`direction`: "input" or "output")."""
    names = [s.name for s in slots]
    listed = ", ".join(names) or "none"
    verb = "reads" if direction == "input" else "writes"
    signature = ", ".join(s.name + ("" if s.required else "?") for s in slots)
    return Wording(
        too_many=lambda n, m: ("E301", f"'{owner}' has {_plural(n, direction + ' port')} ({listed}); "
                               "this key has no port to bind to", None),
        unknown=lambda p, names: ("E301", f"'{owner}' has no {direction} port '{p}'",
                                  did_you_mean(p, names) or f"its {direction} ports are: {listed}"),
        twice=lambda p: ("E207", f"{direction} port '{p}' is bound twice", None),
        missing=lambda p: ("E302", f"{direction} port '{p}' of '{owner}' is not bound", f"'{owner}' {verb}: {signature}"),
        each_extra=True)


def template_port_words(template: str, direction: str) -> Wording:
    """A template's input or output ports."""
    return Wording(
        too_many=lambda n, m: ("E301", f"template '{template}' has {n} {direction} ports, {m} keys bound", None),
        unknown=lambda p, names: ("E301", f"template '{template}' has no {direction} port '{p}'",
                                  did_you_mean(p, names)),
        twice=lambda p: ("E207", f"{direction} port '{p}' of template '{template}' is bound twice", None),
        missing=lambda p: ("E302", f"{direction} port '{p}' of template '{template}' is not bound", None))

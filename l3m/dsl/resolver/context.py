"""What every stage shares: where diagnostics go, and the exception that abandons one expression."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from l3m.dsl.diagnostics import Diagnostic, SourceCache
from l3m.dsl.ir import Span


class Fail(Exception):
    """Aborts evaluating one expression; its diagnostic is already recorded."""


@dataclass
class Reporter:
    """Collects diagnostics. Knows how each file was reached (its import chain) and which template
    instances are being expanded, so every message carries both without the stages passing them."""

    sources: SourceCache = field(default_factory=SourceCache)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file -> the imports that led to it
    instances: list[tuple[str, Span]] = field(default_factory=list)  # (template, where) being expanded
    _said: set = field(default_factory=set)

    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              notes: list[tuple[str, Span | None]] | None = None) -> None:
        """Record a diagnostic of any severity (the code's letter says which)."""
        if span is not None and not span.chain and span.file in self.chains:
            span = replace(span, chain=self.chains[span.file])
        inside = [(f"in the instance of '{name}' at {where}", None) for name, where in reversed(self.instances)]
        d = Diagnostic(code, message, span, help, (notes or []) + inside)
        key = (code, message, span, help, str(d.notes))
        if key in self._said:  # one value checked at each call it reaches (a `default`) is reported once
            return
        self._said.add(key)
        self.diagnostics.append(d)

    @contextmanager
    def outside_instances(self) -> Iterator[None]:
        """While a value written elsewhere (a `default` statement) is checked: no instance notes."""
        saved, self.instances = self.instances, []
        try:
            yield
        finally:
            self.instances = saved

    @contextmanager
    def instance(self, template: str, span: Span) -> Iterator[None]:
        """While a template instance is expanded, its messages say so."""
        self.instances.append((template, span))
        try:
            yield
        finally:
            self.instances.pop()

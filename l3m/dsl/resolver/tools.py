"""The stages that the later ones use, built once per program by the driver (`program.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from l3m.dsl.resolver.context import Reporter
from l3m.dsl.resolver.entries import Catalog
from l3m.dsl.resolver.evaluate import Evaluator
from l3m.dsl.resolver.overrides import Overrides


@dataclass(frozen=True)
class Tools:
    report: Reporter
    overrides: Overrides
    evaluator: Evaluator
    catalog: Catalog
    # Per program: what is derived from an entry once (its slots and wordings), by (use, entry name).
    memo: dict[tuple[str, str], Any] = field(default_factory=dict)
    defaults: Any = None  # `defaults.Defaults`: the `default` statements in force

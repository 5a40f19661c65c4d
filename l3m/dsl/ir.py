"""The resolved program: what every stage after `resolve` reads.

Values here are plain Python (ints, floats, strings, bools, lists, None); every `let`,
import and override has already been applied. Spans point back into the source so that
later stages can still report `file:line:col`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STAGES = ("preprocessor", "trunk", "postprocessor", "head")
ROLES = ("source", "generator", "block", "loss", "metric")


@dataclass(frozen=True)
class Span:
    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    # The import chain that led to this file, outermost first: ("a.l3m:3:1", ...).
    chain: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Call:
    """A registered name instantiated with evaluated arguments."""

    type_name: str
    type_span: Span
    args: list[Any] = field(default_factory=list)
    arg_spans: list[Span] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    kwarg_spans: dict[str, Span] = field(default_factory=dict)

    def kwargs_for(self, signature) -> dict[str, Any]:
        """Positional arguments folded into keywords by the constructor's signature."""
        from l3m.dsl.sigparams import positional_names

        out = dict(zip(positional_names(signature), self.args))
        out.update(self.kwargs)
        return out


@dataclass
class Binding:
    """One key bound to one port of a node (`port` is None until ports are resolved)."""

    key: str
    span: Span
    port: str | None = None
    overwrite: bool = False  # `-> !x`: replaces an earlier, unrelated writer on purpose


@dataclass
class Node:
    """A data source, generator, block, loss or metric: something that reads and writes keys."""

    name: str
    path: str  # unique, dotted: "gpt.trunk.blocks", "data.train", "loss.text"
    role: str  # one of ROLES
    call: Call
    span: Span  # where the node's name stands
    index: int  # declaration order, the scheduler's tie-breaker
    model: str = ""  # dotted model path for blocks ("clip.image"), "" otherwise
    stage: str | None = None
    reads: list[Binding] = field(default_factory=list)
    writes: list[Binding] = field(default_factory=list)
    weight: float = 1.0  # losses: the term's weight in the total
    repeat: int = 1  # blocks repeated inside (e.g. a Transformer's depth), for rendering
    valid: bool = True  # False: its name did not resolve (kept so its keys still flow)

    @property
    def read_keys(self) -> list[str]:
        return [b.key for b in self.reads]

    @property
    def write_keys(self) -> list[str]:
        return [b.key for b in self.writes]

    def ports_in(self) -> dict[str, str]:
        return {b.port: b.key for b in self.reads if b.port is not None}

    def ports_out(self) -> dict[str, str]:
        return {b.port: b.key for b in self.writes if b.port is not None}


@dataclass
class ModelInfo:
    """A model or nested sub-model: a unit of naming, freezing and sharding."""

    path: str  # "gpt", "clip.image"
    name: str
    span: Span
    parent: str | None = None


@dataclass
class KeyDecl:
    """An optional declaration: `tokens: long[B, N]`."""

    name: str
    dtype: str
    shape: list[str | int] | None
    span: Span


@dataclass
class Section:
    """A settings section (`train`, `mesh`, `log`): evaluated values with their spans."""

    name: str
    span: Span | None
    values: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)


@dataclass
class Program:
    file: str
    lets: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)
    keys: dict[str, KeyDecl] = field(default_factory=dict)
    optimizer: Call | None = None
    schedule: Call | None = None
    sections: dict[str, Section] = field(default_factory=dict)
    extensions: list[tuple[str, Span]] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # resolved paths of every imported file
    overrides: list[str] = field(default_factory=list)
    # Extension entries read from source, not imported (lint, graph): name -> ext_static.StaticEntry.
    static_entries: dict[str, Any] = field(default_factory=dict)

    def of_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    @property
    def blocks(self) -> list[Node]:
        return self.of_role("block")

    @property
    def root_model(self) -> ModelInfo | None:
        return next((m for m in self.models if m.parent is None), None)

    def section(self, name: str) -> dict[str, Any]:
        s = self.sections.get(name)
        return dict(s.values) if s else {}

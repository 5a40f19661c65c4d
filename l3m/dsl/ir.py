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


@dataclass(frozen=True)
class Origin:
    """Where an argument's value came from (`plan --why`): `kind` is one of "argument" (written at the
    call), "default" (a `default` statement), "command line" (an override, or `default.NAME.arg=...`),
    "use" (a component materialised from a signature default `use(...)`), "signature" (the
    constructor's own default), "host" (supplied by the host block when it builds the component),
    "setting" (a settings section's field as written)."""

    kind: str
    span: Span | None = None
    detail: str = ""  # e.g. the host parameter a `use(...)` default stood for: "Transformer.attn"
    # An argument that passes a template parameter on (`dim = d`): the parameter, and where its value was set.
    param: str | None = None
    param_span: Span | None = None

    def __str__(self) -> str:
        where = f" at {self.span}" if self.span is not None and not self.span.file.startswith("<") else ""
        if self.span is not None and self.span.file.startswith("<override"):
            where = " on the command line"  # inside a value given as PATH=VALUE
        if self.kind == "argument":
            via = f", from the template parameter '{self.param}' set at {self.param_span}" if self.param else ""
            return f"argument written{where}{via}"
        if self.kind == "setting":
            return f"setting written{where}"
        if self.kind == "default":
            return f"`default` statement{where}"
        if self.kind == "command line":
            return f"command line ({self.detail})" if self.detail else "command line"
        if self.kind == "use":
            return f"materialised `use(...)` default of {self.detail}"
        if self.kind == "signature":
            return f"signature default of {self.detail}"
        if self.kind == "host":
            return f"supplied by the host when it builds the component ({self.detail})"
        return self.kind


@dataclass
class Call:
    """A registered name instantiated with evaluated arguments. As an argument value of another call
    it is a component (`attn = Attention(pos = Rope2d())`), nested to any depth."""

    type_name: str
    type_span: Span
    args: list[Any] = field(default_factory=list)
    arg_spans: list[Span] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    kwarg_spans: dict[str, Span] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)  # per kwarg: where its value came from

    is_component = True  # a value `typecheck.mismatch` accepts where an interface is expected

    def __str__(self) -> str:
        return f"{self.type_name}({', '.join(f'{k}={show(v)}' for k, v in self.kwargs.items())})"

    def kwargs_for(self, signature) -> dict[str, Any]:
        """Positional arguments folded into keywords by the constructor's signature."""
        from l3m.dsl.sigparams import positional_names

        out = dict(zip(positional_names(signature), self.args))
        out.update(self.kwargs)
        return out


def show(value: Any) -> str:
    """An argument value as the file would write it (components as calls)."""
    if isinstance(value, Call):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def to_data(value: Any) -> Any:
    """A resolved argument value as JSON-able data: a component becomes {"type": ..., "kwargs": ...}."""
    if isinstance(value, Call):
        return {"type": value.type_name, "kwargs": {k: to_data(v) for k, v in value.kwargs.items()}}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    return value


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

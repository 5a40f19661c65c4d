"""The syntax tree of one `.l3m` file, exactly as written, with a source span on everything."""

from __future__ import annotations

from dataclasses import dataclass, field

from l3m.dsl.ir import Span

# ----------------------------------------------------------------------------- expressions


@dataclass
class Expr:
    span: Span


@dataclass
class Const(Expr):
    value: int | float | bool | None


@dataclass
class Str(Expr):
    raw: str  # without the quotes, escapes not yet processed


@dataclass
class ListExpr(Expr):
    items: list[Expr]


@dataclass
class Ref(Expr):
    parts: list[str]  # `dim` -> ["dim"], `vit.dim` -> ["vit", "dim"]

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass
class Neg(Expr):
    operand: Expr


# ----------------------------------------------------------------------------- declarations


@dataclass
class Arg:
    name: str | None  # None: positional
    value: Expr
    span: Span  # the whole argument (for a named one, where its name stands)


@dataclass
class CallExpr(Expr):
    """`Name(args)`: a node's call, or (as an expression) a component value. `span` is the name."""

    parts: list[str]  # qualified name: ["Transformer"] or ["vit", "Encoder"]
    args: list[Arg] = field(default_factory=list)

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass
class KeyRef:
    key: str
    span: Span
    port: str | None = None  # named binding: `(port = key)`
    overwrite: bool = False


@dataclass
class NodeDecl:
    """`name: Type(args) reads -> writes` in a data section, a stage, a loss or a metric."""

    name: str
    span: Span
    call: CallExpr
    reads: list[KeyRef]
    writes: list[KeyRef]
    weight: Expr | None = None


@dataclass
class StageDecl:
    name: str
    span: Span
    nodes: list[NodeDecl]


@dataclass
class ModelDecl:
    """`model name { stages and sub-models }`."""

    name: str
    span: Span
    stages: list[StageDecl] = field(default_factory=list)
    models: list[ModelDecl | ModelInst] = field(default_factory=list)
    order: list[StageDecl | ModelDecl | ModelInst] = field(default_factory=list)  # as written


@dataclass
class ModelInst:
    """`model name = Template(args) reads -> writes`: an instance of a `def`."""

    name: str
    span: Span
    call: CallExpr
    reads: list[KeyRef]
    writes: list[KeyRef]


@dataclass
class Param:
    name: str
    span: Span
    default: Expr | None


@dataclass
class DefDecl:
    """`def Name(params) in_ports -> out_ports { body }`: a reusable sub-model."""

    name: str
    span: Span
    params: list[Param]
    inputs: list[tuple[str, Span]]
    outputs: list[tuple[str, Span]]
    body: ModelDecl


@dataclass
class LetDecl:
    name: str
    span: Span
    value: Expr


@dataclass
class ImportDecl:
    path: str
    span: Span  # the path string
    alias: str
    alias_span: Span


@dataclass
class ExtensionDecl:
    module: str
    span: Span


@dataclass
class DefaultDecl:
    """`default Name(args)`: each argument as if written in every call of `Name` that does not write it."""

    call: CallExpr
    span: Span  # the `default` keyword


@dataclass
class KeyDeclAst:
    name: str
    span: Span
    dtype: str
    shape: list[str | int] | None


@dataclass
class Setting:
    name: str
    span: Span
    value: Expr


@dataclass
class SectionDecl:
    name: str  # "train", "mesh", "log"
    span: Span
    settings: list[Setting]


@dataclass
class Module:
    """One parsed file."""

    file: str
    version: int
    version_span: Span
    lets: list[LetDecl] = field(default_factory=list)
    imports: list[ImportDecl] = field(default_factory=list)
    extensions: list[ExtensionDecl] = field(default_factory=list)
    keys: list[KeyDeclAst] = field(default_factory=list)
    data: list[NodeDecl] = field(default_factory=list)
    models: list[ModelDecl | ModelInst] = field(default_factory=list)
    defs: list[DefDecl] = field(default_factory=list)
    losses: list[NodeDecl] = field(default_factory=list)
    metrics: list[NodeDecl] = field(default_factory=list)
    optimizer: list[CallExpr] = field(default_factory=list)  # more than one is an error
    schedule: list[CallExpr] = field(default_factory=list)
    sections: list[SectionDecl] = field(default_factory=list)
    defaults: list[DefaultDecl] = field(default_factory=list)


def source_text(e: Expr) -> str:
    """An expression written back as `.l3m` text (for records and messages; spacing canonical)."""
    if isinstance(e, Const):
        return {True: "true", False: "false", None: "null"}.get(e.value, repr(e.value)) \
            if e.value is None or isinstance(e.value, bool) else repr(e.value)
    if isinstance(e, Str):
        return f'"{e.raw}"'
    if isinstance(e, Ref):
        return e.dotted
    if isinstance(e, ListExpr):
        return "[" + ", ".join(source_text(i) for i in e.items) + "]"
    if isinstance(e, CallExpr):
        args = ", ".join((f"{a.name} = " if a.name else "") + source_text(a.value) for a in e.args)
        return f"{e.dotted}({args})"
    if isinstance(e, BinOp):
        return f"({source_text(e.left)} {e.op} {source_text(e.right)})"
    if isinstance(e, Neg):
        return f"-{source_text(e.operand)}"
    return "?"

"""Links from the file's syntax to the compiled program: which resolved bindings a key under the cursor
is, which version of the key it reads or writes, who wrote that version, and its shape."""

from __future__ import annotations

from dataclasses import dataclass

from l3m.dsl import Compiled
from l3m.dsl.ir import Binding, Node, Span
from l3m.dsl.schedule import Write


@dataclass
class KeyUse:
    node: Node
    binding: Binding
    direction: str  # read | write
    write: Write | None  # the version read, or the version written; None when nothing writes it


def _same(a: Span, b: Span) -> bool:
    return (a.line, a.col, a.end_line, a.end_col) == (b.line, b.col, b.end_line, b.end_col) and a.file == b.file


def key_uses(compiled: Compiled | None, span: Span) -> list[KeyUse]:
    """Every resolved binding written at `span` (several when a template is instantiated several times)."""
    if compiled is None or compiled.program is None:
        return []
    flow = compiled.flow
    out: list[KeyUse] = []
    for n in compiled.program.nodes:
        for i, b in enumerate(n.reads):
            if _same(b.span, span):
                out.append(KeyUse(n, b, "read", flow.reads.get((n.path, i)) if flow else None))
        for b in n.writes:
            if _same(b.span, span):
                w = next((w for w in (flow.writes.get(b.key, []) if flow else []) if w.binding is b), None)
                out.append(KeyUse(n, b, "write", w))
    return out


def shape_of(compiled: Compiled | None, key: str, version: int) -> str | None:
    """The key version's shape as lint inferred it (`Compiled.shapes`), when the shape engine ran."""
    table = getattr(compiled, "shapes", None)
    if table is None:
        return None
    try:
        t = table.of((key, version))
    except Exception:  # an engine of another version: hover goes on without the shape
        return None
    return str(t) if t is not None else None


def node_by_span(compiled: Compiled | None, span: Span) -> list[Node]:
    if compiled is None or compiled.program is None:
        return []
    return [n for n in compiled.program.nodes if _same(n.span, span)]


ROLE_WORDS = {"source": "data source", "generator": "data generator", "block": "block", "loss": "loss",
              "metric": "metric"}


def describe_node(n: Node) -> str:
    return f"{ROLE_WORDS.get(n.role, n.role)} `{n.name}` (`{n.call.type_name}`, `{n.path}`)"

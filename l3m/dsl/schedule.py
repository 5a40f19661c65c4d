"""Schedule: the program's dataflow as a graph over nodes and *versioned* keys.

A write creates a new version of its key; a read sees the latest version written by a node
declared before it (or, failing that, the first one written after it, which the checker then
flags as a cycle or a backward flow). So `x -> x` is a refinement, never a cycle, and the graph
of a sound program is always a DAG. Declaration order breaks ties, so the order is stable.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from l3m.dsl.diagnostics import Diagnostic, did_you_mean
from l3m.dsl.ir import STAGES, Binding, Node, Program

if TYPE_CHECKING:
    import networkx as nx

_PHASE = {"source": 0, "generator": 0, "block": 1, "loss": 2, "metric": 2}


@dataclass
class Write:
    node: Node
    binding: Binding
    version: int
    readers: list[Node] = field(default_factory=list)


class _GraphLog:
    """The dataflow graph's nodes and edges in insertion order: a networkx graph is built from it only
    when asked for (`Dataflow.graph`), so checking a file does not import networkx."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def add_node(self, n: Any, **attrs: Any) -> None:
        self.items.append((n, attrs))

    def add_edge(self, u: Any, v: Any, **attrs: Any) -> None:
        self.items.append((u, v, attrs))

    def build(self) -> nx.DiGraph:
        import networkx as nx

        g = nx.DiGraph()
        for item in self.items:
            if len(item) == 2:
                g.add_node(item[0], **item[1])
            else:
                g.add_edge(item[0], item[1], **item[2])
        return g


@dataclass
class Dataflow:
    order: list[str]  # node paths in a valid execution order (sources first)
    diagnostics: list[Diagnostic]
    reads: dict[tuple[str, int], Write]  # (node path, binding index) -> the write it sees
    writes: dict[str, list[Write]]  # key -> its versions in declaration order
    nodes: dict[str, Node] = field(default_factory=dict)  # node path -> node
    log: _GraphLog = field(default_factory=_GraphLog, repr=False)

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The networkx DiGraph: nodes are node paths (attribute `node`) and ("key", name, version);
        edges carry `key`. Built (and networkx imported) on first use."""
        return self.log.build()

    def node(self, path: str) -> Node:
        """The program node at `path` (what `graph.nodes[path]["node"]` holds, without networkx)."""
        return self.nodes[path]

    def model_order(self) -> list[str]:
        """Block paths in execution order: what the MetaModel's forward runs."""
        return [p for p in self.order if self.nodes[p].role == "block"]


def key_node(key: str, version: int) -> tuple[str, str, int]:
    return ("key", key, version)


def dataflow(program: Program) -> Dataflow:
    diags: list[Diagnostic] = []
    g = _GraphLog()
    nodes = sorted(program.nodes, key=lambda n: n.index)
    writes: dict[str, list[Write]] = defaultdict(list)
    by_path = {n.path: n for n in nodes}

    # Pass 1: every write is a version. Sources are alternatives, so they share version 0.
    for n in nodes:
        g.add_node(n.path, node=n)
        reads_here = set(n.read_keys)
        for b in n.writes:
            versions = writes[b.key]
            if n.role == "source":
                if versions and versions[0].node.role == "source":  # another alternative writer
                    g.add_edge(n.path, key_node(b.key, 0), key=b.key)
                    continue
                w = Write(n, b, 0)
            else:
                if versions and b.key not in reads_here and not b.overwrite:
                    prev = versions[-1].node
                    diags.append(Diagnostic(
                        "E102", f"key '{b.key}' is already written by {_what(prev)}; '{n.name}' writes it again "
                        "without reading it", b.span,
                        f"write `!{b.key}` to overwrite on purpose, or give the new value another name",
                        [(f"{_what(prev)} writes it here", versions[-1].binding.span)]))
                w = Write(n, b, len(versions))
            versions.append(w)
            g.add_node(key_node(b.key, w.version), key=b.key, version=w.version)
            g.add_edge(n.path, key_node(b.key, w.version), key=b.key)

    _check_sources(program, diags)

    # Pass 2: every read sees one version.
    reads: dict[tuple[str, int], Write] = {}
    all_keys = list(writes)
    # Writes of a key are in node order: bisect, so that a key written by thousands of nodes stays linear.
    write_index = {k: [w.node.index for w in ws] for k, ws in writes.items()}
    for n in nodes:
        for i, b in enumerate(n.reads):
            versions = writes.get(b.key, [])
            before = bisect.bisect_left(write_index.get(b.key, []), n.index)  # n's own writes are not before it
            # the latest write before n, else the first by another node
            w = versions[before - 1] if before else next((v for v in versions if v.node is not n), None)
            if w is None:
                what = "nothing writes" if b.key not in writes else "only it writes"
                diags.append(Diagnostic("E101", f"{_what(n)} reads key '{b.key}', which {what}", b.span,
                                        did_you_mean(b.key, all_keys)))
                continue
            reads[(n.path, i)] = w
            w.readers.append(n)
            g.add_edge(key_node(b.key, w.version), n.path, key=b.key)
            _check_direction(w.node, n, b, diags)

    # Cycles: reads of keys written only later can close a loop.
    succ: dict[str, dict[str, None]] = {n.path: {} for n in nodes}
    for (reader, _), w in reads.items():
        succ[w.node.path][reader] = None
    order = _topological(succ, {n.path: n.index for n in nodes})
    if order is None:
        order = []
        cycle = _find_cycle(succ)
        names = [by_path[a].name for a, _ in cycle] + [by_path[cycle[0][0]].name]
        first = by_path[cycle[0][0]]
        diags.append(Diagnostic("E103", "the dataflow has a cycle: " + " -> ".join(names), first.span,
                                "a node reads a key that is written only after it, by a node that depends on it"))

    # Outputs nobody reads.
    for key, versions in writes.items():
        for w in versions:
            if not w.readers and w.node.role in ("block", "generator"):
                diags.append(Diagnostic("W101", f"key '{key}' written by {_what(w.node)} is never read",
                                        w.binding.span))
    for k in program.keys.values():
        if k.name not in writes:
            diags.append(Diagnostic("W102", f"key '{k.name}' is declared but never written", k.span))
    return Dataflow(order, diags, reads, dict(writes), by_path, g)


def _topological(succ: dict[str, dict[str, None]], index: dict[str, int]) -> list[str] | None:
    """The node order in which every node follows those it reads from, ties broken by declaration
    order (the smallest ready index first); None when there is a cycle."""
    indegree = dict.fromkeys(succ, 0)
    for targets in succ.values():
        for t in targets:
            indegree[t] += 1
    position = {p: i for i, p in enumerate(succ)}  # then insertion order, as networkx breaks ties
    ready = [(index[p], position[p], p) for p, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        p = heapq.heappop(ready)[2]
        order.append(p)
        for t in succ[p]:
            indegree[t] -= 1
            if indegree[t] == 0:
                heapq.heappush(ready, (index[t], position[t], t))
    return order if len(order) == len(succ) else None


def _find_cycle(succ: dict[str, dict[str, None]]) -> list[tuple[str, str]]:
    """One cycle's edges (only on the error path, so networkx's own search, imported here)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(succ)
    g.add_edges_from((u, v) for u, targets in succ.items() for v in targets)
    return nx.find_cycle(g)


def _what(n: Node) -> str:
    role = {"source": "data source", "generator": "generator", "block": "block"}.get(n.role, n.role)
    return f"{role} '{n.name}'"


def _check_sources(program: Program, diags: list[Diagnostic]) -> None:
    sources = program.of_role("source")
    if len(sources) < 2:
        return
    first = sources[0]
    want = set(first.write_keys)
    for s in sources[1:]:
        got = set(s.write_keys)
        if got != want:
            missing, extra = sorted(want - got), sorted(got - want)
            parts = []
            if missing:
                parts.append(f"does not write {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"writes {', '.join(map(repr, extra))}")
            diags.append(Diagnostic("E105", f"data source '{s.name}' {' and '.join(parts)}, unlike '{first.name}'",
                                    s.span))


def _check_direction(writer: Node, reader: Node, b: Binding, diags: list[Diagnostic]) -> None:
    wp, rp = _PHASE[writer.role], _PHASE[reader.role]
    if wp > rp:
        diags.append(Diagnostic("E104", f"{_what(reader)} reads key '{b.key}', which {_what(writer)} writes later "
                                "in the pipeline", b.span,
                                "dataflow goes data -> model -> losses and metrics"))
        return
    if writer.role == reader.role == "block" and writer.model == reader.model and writer.stage and reader.stage:
        ws, rs = STAGES.index(writer.stage), STAGES.index(reader.stage)
        if ws > rs:
            diags.append(Diagnostic(
                "E104", f"block '{reader.name}' in the {reader.stage} reads key '{b.key}', which block "
                f"'{writer.name}' writes in the later {writer.stage}", b.span,
                "stages run preprocessor -> trunk -> postprocessor -> head"))

"""Render the dataflow: DOT (and SVG/PNG through Graphviz), Mermaid, a text tree, JSON.

Stages and nested models are clusters, keys label the edges (with their static shape when
`l3m.dsl.shapes` knows it), repeated blocks are drawn once with their count, and blocks show their
key arguments and parameter counts (`l3m.dsl.shapes.params`; no torch). The data sources are
alternatives that write the same keys, so the pictures draw them as one node: each edge once.
The JSON form is the tool interface.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from l3m.dsl.ir import STAGES, Call, Node, Origin, Program
from l3m.dsl.paramcheck import block_args, full_name, model_params, node_params, tied_copies, ties
from l3m.dsl.schedule import Dataflow
from l3m.dsl.shapes.params import count
from l3m.dsl.sharecheck import shared_copies

# `shape_of(key, version)`: the static type of one version of a key, as text (None: unknown).
ShapeOf = Callable[[str, int], "str | None"]

FORMATS = ("svg", "png", "dot", "mmd", "txt", "json")


class RenderError(Exception):
    pass


def _label(n: Node) -> str:
    times = f" ×{n.repeat}" if n.repeat > 1 else ""
    return f"{n.name}: {n.call.type_name}{times}"


def _short(key: str, model: str) -> str:
    """A template instance's private key as written inside it (`x`, not `clip.image.x`)."""
    return key[len(model) + 1:] if model and key.startswith(model + ".") else key


# The arguments that say what a block is, in the order they are shown (at most `_MAX_ARGS` of them).
KEY_ARGS = ("vocab", "dim", "in_dim", "in_features", "out_features", "out_dim", "depth", "heads", "num_experts",
            "kv_heads", "num_classes", "patch", "num", "hidden", "moe_every", "top_k", "num_queries", "k")
_MAX_ARGS = 4
_WRITTEN = Origin("argument")

# The one node that stands for every data source in the pictures (they write the same keys).
DATA_NODE = "data"


def humanize(n: int) -> str:
    """A parameter count as people write it: 950, 12.3K, 102K, 1.2M, 7B."""
    if n < 1000:
        return str(n)
    for unit, size in (("K", 10**3), ("M", 10**6), ("B", 10**9)):
        v = n / size
        text = f"{v:.1f}" if v < 100 else f"{v:.0f}"
        if float(text) < 1000 or unit == "B":  # 999,999 is 1M, not 1000K
            return text.removesuffix(".0") + unit
    return str(n)


def key_args(n: Node) -> str:
    """`dim=64 depth=2 heads=2`: the node's key arguments as the file gives them."""
    args = block_args(n)
    shown = [f"{k}={args[k]}" for k in KEY_ARGS
             if k in args and isinstance(args[k], int) and not isinstance(args[k], bool)][:_MAX_ARGS]
    # Components the file configured (`attn=Attention(pos=Rope2d())`); a bare materialised default is not news.
    shown += [f"{k}={v}" for k, v in n.call.kwargs.items()
              if isinstance(v, Call) and (v.kwargs or n.call.origins.get(k, _WRITTEN).kind != "use")]
    return " ".join(shown)


@dataclass
class _Facts:
    """What the pictures say about each node beyond its name: key arguments and parameters."""

    args: dict[str, str] = field(default_factory=dict)  # node path -> "dim=64 depth=2"
    params: dict[str, int | None] = field(default_factory=dict)  # block path -> its own count (None: unknown)
    tied: dict[str, str] = field(default_factory=dict)  # block path -> the block whose weight it shares
    models: dict[str, int | None] = field(default_factory=dict)  # model path -> total (None: some unknown)
    pipeline: Any = None  # with `mesh { pp = N }`: the static split (l3m.dsl.render_pp.GraphSplit)


def _facts(program: Program) -> _Facts:
    facts = _Facts()
    for n in program.nodes:
        if n.role in ("block", "loss", "metric"):
            facts.args[n.path] = key_args(n)
        if n.role in ("loss", "metric"):
            own = node_params(n)
            facts.params[n.path] = None if own is None else count(own)
    if not program.blocks:
        return facts
    params = model_params(program)
    copies = tied_copies(program, params)  # a tied weight is counted once, at the block it belongs to
    facts.tied = {t.node.path: t.target.name for t in ties(program, params) if full_name(t.node, t.mine) in copies}
    shared_names, shared_blocks = shared_copies(program, params)  # `share` (l3m.dsl.sharecheck): counted once
    copies.update(shared_names)
    facts.tied.update(shared_blocks)
    for n in program.blocks:
        own = params.relative.get(n.path)
        facts.params[n.path] = None if own is None else count([(r, s) for r, s in own if full_name(n, r) not in copies])
    for m in program.models:
        inside = [facts.params[n.path] for n in program.blocks if n.model == m.path or n.model.startswith(m.path + ".")]
        facts.models[m.path] = None if any(c is None for c in inside) else sum(inside)
    return facts


def _lines(n: Node, facts: _Facts) -> list[str]:
    """A node's label, one line per fact: `blocks: Transformer ×2`, `dim=64 depth=2 heads=2`, `102K params`."""
    lines = [_label(n)]
    if facts.args.get(n.path):
        lines.append(facts.args[n.path])
    count, tied = facts.params.get(n.path), facts.tied.get(n.path)
    if count and tied:
        lines.append(f"{humanize(count)} params + the weight of {tied}")
    elif count:
        lines.append(f"{humanize(count)} params")
    elif tied:
        lines.append(f"the weight of {tied}")
    stage = facts.pipeline.label(n.path) if facts.pipeline is not None else None
    if stage:
        lines.append(stage)
    return lines


def _pipelined(program: Program, flow: Dataflow) -> _Facts:
    """The facts, with the pipeline split when the mesh declares `pp > 1` (l3m.dsl.render_pp)."""
    from l3m.dsl.render_pp import graph_split

    facts = _facts(program)
    facts.pipeline = graph_split(program, flow.model_order(), facts.params)
    return facts


_STAGE_COLORS = ("#e8f5e9", "#fff3e0", "#e1f5fe", "#fce4ec", "#f3e5f5", "#fffde7", "#e0f2f1", "#efebe9")


def _model_label(path: str, facts: _Facts) -> str:
    total = facts.models.get(path)
    return f"model {path}" + (f" · {humanize(total)} params" if total else "")


@dataclass(frozen=True)
class _Edge:
    writer: str  # node path (DATA_NODE for the data sources, where merged)
    reader: str
    key: str
    version: int
    shape: str | None


def _shape_fn(shapes: Any) -> ShapeOf:
    """`shapes` as a `shape_of(key, version)`: a ShapeTable (`.of((key, version))`), a callable, or None."""
    if shapes is None:
        return lambda key, version: None
    if callable(shapes) and not hasattr(shapes, "of"):
        return shapes

    def of(key: str, version: int) -> str | None:
        t = shapes.of((key, version))
        return str(t) if t is not None else None

    return of


def _edges(program: Program, flow: Dataflow, short: bool = False, merge_sources: bool = True,
           shapes: Any = None) -> list[_Edge]:
    """Each read once, in declaration order of readers: the writer it sees, the key and its shape.
    With `merge_sources`, every data source is the one `DATA_NODE` (they are alternatives)."""
    shape_of = _shape_fn(shapes)
    out: list[_Edge] = []
    seen: set[tuple[str, str, str]] = set()
    for n in sorted(program.nodes, key=lambda n: n.index):
        for i, b in enumerate(n.reads):
            w = flow.reads.get((n.path, i))
            if w is None:
                continue
            writer = DATA_NODE if merge_sources and w.node.role == "source" else w.node.path
            key = _short(b.key, n.model) if short else b.key
            if (writer, n.path, key) in seen:
                continue
            seen.add((writer, n.path, key))
            out.append(_Edge(writer, n.path, key, w.version, shape_of(w.binding.key, w.version)))
    return out


@dataclass
class _Cluster:
    """A box of the drawing: the data, a model, one of its stages, the losses, the metrics."""

    ident: str
    label: str
    style: str  # "data", "model", "stage", "losses", "metrics"
    nodes: list[Node] = field(default_factory=list)
    children: list[_Cluster] = field(default_factory=list)


def _clusters(program: Program, facts: _Facts | None = None) -> list[_Cluster]:
    groups: dict[str, list[Node]] = defaultdict(list)
    for n in sorted(program.nodes, key=lambda n: n.index):
        if n.role == "block":
            groups[f"{n.model}/{n.stage}"].append(n)
        else:
            groups[{"source": "data", "generator": "data", "loss": "losses", "metric": "metrics"}[n.role]].append(n)
    children: dict[str | None, list[str]] = defaultdict(list)
    for m in program.models:
        children[m.parent].append(m.path)

    def model(path: str) -> _Cluster:
        stages = [_Cluster(_ident(f"{path}_{st}"), st, "stage", groups[f"{path}/{st}"])
                  for st in STAGES if groups.get(f"{path}/{st}")]
        label = _model_label(path, facts) if facts is not None else f"model {path}"
        return _Cluster(_ident(path), label, "model", [], stages + [model(c) for c in children[path]])

    out = [_Cluster("data", "data", "data", groups["data"])] if groups.get("data") else []
    out += [model(root) for root in children[None]]
    out += [_Cluster(name, name, name, groups[name]) for name in ("losses", "metrics") if groups.get(name)]
    return out


def _emit(clusters: list[_Cluster], open_, node_, close_, indent: str = "  ") -> list[str]:
    """Lines for nested clusters; `node_` and `close_` may return None (no line)."""
    lines: list[str] = []

    def walk(c: _Cluster, ind: str) -> None:
        lines.append(ind + open_(c))
        lines.extend(ind + "  " + line for line in map(node_, c.nodes) if line is not None)
        for child in c.children:
            walk(child, ind + "  ")
        end = close_(c)
        if end is not None:
            lines.append(ind + end)

    for c in clusters:
        walk(c, indent)
    return lines


def _ident(path: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in path)


def _picture_node(program: Program, facts: _Facts) -> Callable[[Node], tuple[str, list[str]] | None]:
    """(identifier, label lines) of each node as the pictures draw it: the data sources as one node
    (its first source stands for it; the others draw nothing)."""
    sources = sorted(program.of_role("source"), key=lambda n: n.index)

    def node(n: Node) -> tuple[str, list[str]] | None:
        if n.role != "source":
            return _ident(n.path), _lines(n, facts)
        if n is not sources[0]:
            return None
        return _ident(DATA_NODE), [_label(s) for s in sources]

    return node


def _ident_of(path: str) -> str:
    return _ident(DATA_NODE) if path == DATA_NODE else _ident(path)


_DOT_STYLE = {"data": 'style=filled; color="#e3f2fd";', "losses": 'style=filled; color="#fce4ec";',
              "metrics": 'style=filled; color="#f3e5f5";', "model": "style=dashed;",
              "stage": 'style=filled; color="#eeeeee";'}


def _drawer(program: Program, facts, draw: Callable[[str, list[str]], str]) -> Callable[[Node], str | None]:
    """A node's text in one picture format (`draw(ident, lines)`), or None for a node not drawn."""
    picture = _picture_node(program, facts)

    def node(n: Node) -> str | None:
        drawn = picture(n)
        return None if drawn is None else draw(*drawn)

    return node


def _edge_text(e: _Edge, sep: str) -> str:
    return e.key + (f"{sep}{e.shape}" if e.shape else "")


def to_dot(program: Program, flow: Dataflow, shapes: Any = None) -> str:
    facts = _pipelined(program, flow)
    pipe = facts.pipeline

    def fill(ident: str) -> str:  # each pipeline stage its own colour (a block cut between layers: its first)
        if pipe is None:
            return ""
        stages = next((v for k, v in pipe.stages_of.items() if _ident(k) == ident), None)
        return f', fillcolor="{_STAGE_COLORS[stages[0] % len(_STAGE_COLORS)]}"' if stages else ""

    node = _drawer(program, facts,
                   lambda ident, lines: f'{ident} [label="{_esc(chr(10).join(lines))}"{fill(ident)}];')

    lines = ["digraph l3m {", '  rankdir=TB; compound=true; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    lines += _emit(_clusters(program, facts),
                   lambda c: f'subgraph cluster_{c.ident} {{ label="{_esc(c.label)}"; {_DOT_STYLE[c.style]}',
                   node, lambda c: "}")
    for e in _edges(program, flow, short=True, shapes=shapes):
        last = pipe.split.stages - 1 if pipe is not None else 0  # the losses run on the last stage
        cut = pipe is not None and e.writer in pipe.stages_of and \
            pipe.stages_of[e.writer][-1] < pipe.stages_of.get(e.reader, [last])[0]
        style = ', color="#c62828", penwidth=2, fontcolor="#c62828"' if cut else ""
        text = _edge_text(e, chr(10)) + ("\n(pipeline cut)" if cut else "")
        lines.append(f'  {_ident_of(e.writer)} -> {_ident_of(e.reader)} [label="{_esc(text)}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    """A DOT string's body: quotes and backslashes escaped, line breaks as `\\n`."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_mermaid(program: Program, flow: Dataflow, shapes: Any = None) -> str:
    facts = _facts(program)
    node = _drawer(program, facts, lambda ident, lines: f'{ident}["{"<br/>".join(_mm(line) for line in lines)}"]')

    lines = ["flowchart TD"]
    lines += _emit(_clusters(program, facts), lambda c: f'subgraph {c.ident}["{_mm(c.label)}"]', node, lambda c: "end")
    for e in _edges(program, flow, short=True, shapes=shapes):
        lines.append(f'  {_ident_of(e.writer)} -->|"{_mm(_edge_text(e, " "))}"| {_ident_of(e.reader)}')
    return "\n".join(lines) + "\n"


def _mm(s: str) -> str:
    return s.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def to_text(program: Program, flow: Dataflow, shapes: Any = None) -> str:
    facts = _pipelined(program, flow)
    shape_of = _shape_fn(shapes)

    def out_key(n: Node, b) -> str:
        version = 0 if n.role == "source" else next(  # the sources are alternatives: version 0, each
            (w.version for w in flow.writes.get(b.key, []) if w.node is n and w.binding is b), None)
        shape = shape_of(b.key, version) if version is not None else None
        return ("!" if b.overwrite else "") + _short(b.key, n.model) + (f" {shape}" if shape else "")

    def row(n: Node) -> str:
        ins = ", ".join(_short(k, n.model) for k in n.read_keys)
        outs = ", ".join(out_key(n, b) for b in n.writes)
        weight = f"   (weight {n.weight:g})" if n.role == "loss" else ""
        extra = _lines(n, facts)[1:]
        extra_text = f"   [{'; '.join(extra)}]" if extra else ""
        return f"{_label(n):<40} {ins} -> {outs}".rstrip() + weight + extra_text

    out = _emit(_clusters(program, facts), lambda c: c.label, row, lambda c: None, indent="")
    out += ["", "order: " + " -> ".join(flow.order)]
    if facts.pipeline is not None:
        from l3m.dsl.render_pp import pipeline_lines

        out += ["", *pipeline_lines(facts.pipeline)]
    return "\n".join(out) + "\n"


def to_json(program: Program, flow: Dataflow, shapes: Any = None) -> str:
    facts = _facts(program)
    blocks = [{
        "name": n.name,
        "path": n.path,
        "type": n.call.type_name,
        "role": n.role,
        "model": n.model,
        "stage": n.stage,
        "reads": n.read_keys,
        "writes": n.write_keys,
        "repeat": n.repeat,
        "line": n.span.line,
        "col": n.span.col,
        "file": n.span.file,
        "args": facts.args.get(n.path, ""),
        "params": facts.params.get(n.path),
    } for n in sorted(program.nodes, key=lambda n: n.index)]
    keys = list(dict.fromkeys(k for n in program.nodes for k in n.write_keys + n.read_keys))
    edges = [{"from": e.writer, "to": e.reader, "key": e.key, "version": e.version, "shape": e.shape}
             for e in _edges(program, flow, merge_sources=False, shapes=shapes)]
    return json.dumps({"blocks": blocks, "order": flow.order, "keys": keys, "edges": edges,
                       "models": [{"path": m.path, "parent": m.parent, "params": facts.models.get(m.path)}
                                  for m in program.models]}, indent=2) + "\n"


def render(program: Program, flow: Dataflow, fmt: str, shapes: Any = None) -> bytes:
    """The graph in `fmt` (one of FORMATS); SVG and PNG need Graphviz's `dot`. `shapes` labels the
    edges: a `ShapeTable` (`Compiled.shapes`) or a `shape_of(key, version) -> str | None`."""
    if fmt == "dot":
        return to_dot(program, flow, shapes).encode()
    if fmt == "mmd":
        return to_mermaid(program, flow, shapes).encode()
    if fmt == "txt":
        return to_text(program, flow, shapes).encode()
    if fmt == "json":
        return to_json(program, flow, shapes).encode()
    if fmt in ("svg", "png"):
        dot = shutil.which("dot")
        if dot is None:
            raise RenderError(f"rendering .{fmt} needs Graphviz's `dot`, which is not installed "
                              "(Debian/Ubuntu: apt-get install graphviz); .dot, .mmd, .txt and .json work without it")
        proc = subprocess.run([dot, f"-T{fmt}"], input=to_dot(program, flow, shapes).encode(), capture_output=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RenderError(f"Graphviz failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    raise RenderError(f"unknown format '{fmt}'; use one of {', '.join('.' + f for f in FORMATS)}")

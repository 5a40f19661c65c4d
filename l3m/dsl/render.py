"""Render the dataflow: DOT (and SVG/PNG through Graphviz), Mermaid, a text tree, JSON.

Stages and nested models are clusters, keys label the edges, repeated blocks are drawn once
with their count. The JSON form is the tool interface.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field

from l3m.dsl.ir import STAGES, Node, Program
from l3m.dsl.schedule import Dataflow

FORMATS = ("svg", "png", "dot", "mmd", "txt", "json")


class RenderError(Exception):
    pass


def _label(n: Node) -> str:
    times = f" ×{n.repeat}" if n.repeat > 1 else ""
    return f"{n.name}: {n.call.type_name}{times}"


def _short(key: str, model: str) -> str:
    """A template instance's private key as written inside it (`x`, not `clip.image.x`)."""
    return key[len(model) + 1:] if model and key.startswith(model + ".") else key


def _edges(program: Program, flow: Dataflow, short: bool = False) -> list[tuple[str, str, str]]:
    """(writer path, reader path, key) for every read, in declaration order of readers."""
    out = []
    for n in sorted(program.nodes, key=lambda n: n.index):
        for i, b in enumerate(n.reads):
            w = flow.reads.get((n.path, i))
            if w is not None:
                out.append((w.node.path, n.path, _short(b.key, n.model) if short else b.key))
    # Alternative data sources feed the same keys: draw an edge from each.
    sources = program.of_role("source")
    extra = []
    for w_path, r_path, key in out:
        for s in sources:
            if s.path != w_path and key in s.write_keys and any(x.path == w_path for x in sources):
                extra.append((s.path, r_path, key))
    return out + extra


@dataclass
class _Cluster:
    """A box of the drawing: the data, a model, one of its stages, the losses, the metrics."""

    ident: str
    label: str
    style: str  # "data", "model", "stage", "losses", "metrics"
    nodes: list[Node] = field(default_factory=list)
    children: list[_Cluster] = field(default_factory=list)


def _clusters(program: Program) -> list[_Cluster]:
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
        return _Cluster(_ident(path), f"model {path}", "model", [], stages + [model(c) for c in children[path]])

    out = [_Cluster("data", "data", "data", groups["data"])] if groups.get("data") else []
    out += [model(root) for root in children[None]]
    out += [_Cluster(name, name, name, groups[name]) for name in ("losses", "metrics") if groups.get(name)]
    return out


def _emit(clusters: list[_Cluster], open_, node_, close_, indent: str = "  ") -> list[str]:
    """Lines for nested clusters; `close_` may return None (no closing line)."""
    lines: list[str] = []

    def walk(c: _Cluster, ind: str) -> None:
        lines.append(ind + open_(c))
        lines.extend(ind + "  " + node_(n) for n in c.nodes)
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


_DOT_STYLE = {"data": 'style=filled; color="#e3f2fd";', "losses": 'style=filled; color="#fce4ec";',
              "metrics": 'style=filled; color="#f3e5f5";', "model": "style=dashed;",
              "stage": 'style=filled; color="#eeeeee";'}


def to_dot(program: Program, flow: Dataflow) -> str:
    lines = ["digraph l3m {", '  rankdir=TB; compound=true; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    lines += _emit(_clusters(program),
                   lambda c: f'subgraph cluster_{c.ident} {{ label="{_esc(c.label)}"; {_DOT_STYLE[c.style]}',
                   lambda n: f'{_ident(n.path)} [label="{_esc(_label(n))}"];',
                   lambda c: "}")
    for a, b, key in _edges(program, flow, short=True):
        lines.append(f'  {_ident(a)} -> {_ident(b)} [label="{_esc(key)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def to_mermaid(program: Program, flow: Dataflow) -> str:
    lines = ["flowchart TD"]
    lines += _emit(_clusters(program), lambda c: f'subgraph {c.ident}["{_mm(c.label)}"]',
                   lambda n: f'{_ident(n.path)}["{_mm(_label(n))}"]', lambda c: "end")
    for a, b, key in _edges(program, flow, short=True):
        lines.append(f'  {_ident(a)} -->|"{_mm(key)}"| {_ident(b)}')
    return "\n".join(lines) + "\n"


def _mm(s: str) -> str:
    return s.replace('"', "#quot;")


def to_text(program: Program, flow: Dataflow) -> str:
    def row(n: Node) -> str:
        ins = ", ".join(_short(k, n.model) for k in n.read_keys)
        outs = ", ".join(("!" if b.overwrite else "") + _short(b.key, n.model) for b in n.writes)
        weight = f"   (weight {n.weight:g})" if n.role == "loss" else ""
        return f"{_label(n):<40} {ins} -> {outs}".rstrip() + weight

    out = _emit(_clusters(program), lambda c: c.label, row, lambda c: None, indent="")
    out += ["", "order: " + " -> ".join(flow.order)]
    return "\n".join(out) + "\n"


def to_json(program: Program, flow: Dataflow) -> str:
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
    } for n in sorted(program.nodes, key=lambda n: n.index)]
    keys = list(dict.fromkeys(k for n in program.nodes for k in n.write_keys + n.read_keys))
    edges = [{"from": a, "to": b, "key": k} for a, b, k in _edges(program, flow)]
    return json.dumps({"blocks": blocks, "order": flow.order, "keys": keys, "edges": edges,
                       "models": [{"path": m.path, "parent": m.parent} for m in program.models]}, indent=2) + "\n"


def render(program: Program, flow: Dataflow, fmt: str) -> bytes:
    """The graph in `fmt` (one of FORMATS); SVG and PNG need Graphviz's `dot`."""
    if fmt == "dot":
        return to_dot(program, flow).encode()
    if fmt == "mmd":
        return to_mermaid(program, flow).encode()
    if fmt == "txt":
        return to_text(program, flow).encode()
    if fmt == "json":
        return to_json(program, flow).encode()
    if fmt in ("svg", "png"):
        dot = shutil.which("dot")
        if dot is None:
            raise RenderError(f"rendering .{fmt} needs Graphviz's `dot`, which is not installed "
                              "(Debian/Ubuntu: apt-get install graphviz); .dot, .mmd, .txt and .json work without it")
        proc = subprocess.run([dot, f"-T{fmt}"], input=to_dot(program, flow).encode(), capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RenderError(f"Graphviz failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    raise RenderError(f"unknown format '{fmt}'; use one of {', '.join('.' + f for f in FORMATS)}")

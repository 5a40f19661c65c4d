"""Render the dataflow: DOT (and SVG/PNG through Graphviz), Mermaid, a text tree, JSON.

Stages and nested models are clusters, keys label the edges, repeated blocks are drawn once
with their count. The JSON form is the tool interface.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict

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


def _groups(program: Program) -> dict[str, list[Node]]:
    groups: dict[str, list[Node]] = defaultdict(list)
    for n in sorted(program.nodes, key=lambda n: n.index):
        if n.role == "block":
            groups[f"{n.model}/{n.stage}"].append(n)
        else:
            groups[{"source": "data", "generator": "data", "loss": "losses", "metric": "metrics"}[n.role]].append(n)
    return groups


def _ident(path: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in path)


def to_dot(program: Program, flow: Dataflow) -> str:
    lines = ["digraph l3m {", '  rankdir=TB; compound=true; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    groups = _groups(program)

    def emit_nodes(nodes: list[Node], indent: str) -> None:
        for n in nodes:
            lines.append(f'{indent}{_ident(n.path)} [label="{_esc(_label(n))}"];')

    for name, color in (("data", "#e3f2fd"), ("losses", "#fce4ec"), ("metrics", "#f3e5f5")):
        if groups.get(name):
            lines.append(f'  subgraph cluster_{name} {{ label="{name}"; style=filled; color="{color}";')
            emit_nodes(groups[name], "    ")
            lines.append("  }")
    children: dict[str | None, list[str]] = defaultdict(list)
    for m in program.models:
        children[m.parent].append(m.path)

    def emit_model(path: str, indent: str) -> None:
        lines.append(f'{indent}subgraph cluster_{_ident(path)} {{ label="model {_esc(path)}"; style=dashed;')
        for stage in STAGES:
            nodes = groups.get(f"{path}/{stage}")
            if nodes:
                lines.append(f'{indent}  subgraph cluster_{_ident(path + "_" + stage)} {{ label="{stage}"; '
                             'style=filled; color="#eeeeee";')
                emit_nodes(nodes, indent + "    ")
                lines.append(f"{indent}  }}")
        for child in children.get(path, []):
            emit_model(child, indent + "  ")
        lines.append(f"{indent}}}")

    for root in children.get(None, []):
        emit_model(root, "  ")
    for a, b, key in _edges(program, flow, short=True):
        lines.append(f'  {_ident(a)} -> {_ident(b)} [label="{_esc(key)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def to_mermaid(program: Program, flow: Dataflow) -> str:
    lines = ["flowchart TD"]
    groups = _groups(program)
    for name in ("data", "losses", "metrics"):
        if groups.get(name):
            lines.append(f"  subgraph {name}")
            lines += [f'    {_ident(n.path)}["{_mm(_label(n))}"]' for n in groups[name]]
            lines.append("  end")
    children: dict[str | None, list[str]] = defaultdict(list)
    for m in program.models:
        children[m.parent].append(m.path)

    def emit_model(path: str, indent: str) -> None:
        lines.append(f'{indent}subgraph {_ident(path)}["model {_mm(path)}"]')
        for stage in STAGES:
            nodes = groups.get(f"{path}/{stage}")
            if nodes:
                lines.append(f'{indent}  subgraph {_ident(path + "_" + stage)}["{stage}"]')
                lines.extend(f'{indent}    {_ident(n.path)}["{_mm(_label(n))}"]' for n in nodes)
                lines.append(f"{indent}  end")
        for child in children.get(path, []):
            emit_model(child, indent + "  ")
        lines.append(f"{indent}end")

    for root in children.get(None, []):
        emit_model(root, "  ")
    for a, b, key in _edges(program, flow, short=True):
        lines.append(f'  {_ident(a)} -->|"{_mm(key)}"| {_ident(b)}')
    return "\n".join(lines) + "\n"


def _mm(s: str) -> str:
    return s.replace('"', "#quot;")


def to_text(program: Program, flow: Dataflow) -> str:
    out: list[str] = []
    groups = _groups(program)

    def row(n: Node, indent: str) -> str:
        ins = ", ".join(_short(k, n.model) for k in n.read_keys)
        outs = ", ".join(("!" if b.overwrite else "") + _short(b.key, n.model) for b in n.writes)
        return f"{indent}{_label(n):<40} {ins} -> {outs}".rstrip()

    for name in ("data",):
        if groups.get(name):
            out.append(name)
            out += [row(n, "  ") for n in groups[name]]
    children: dict[str | None, list[str]] = defaultdict(list)
    for m in program.models:
        children[m.parent].append(m.path)

    def emit_model(path: str, indent: str) -> None:
        out.append(f"{indent}model {path}")
        for stage in STAGES:
            nodes = groups.get(f"{path}/{stage}")
            if nodes:
                out.append(f"{indent}  {stage}")
                out.extend(row(n, indent + "    ") for n in nodes)
        for child in children.get(path, []):
            emit_model(child, indent + "  ")

    for root in children.get(None, []):
        emit_model(root, "")
    for name in ("losses", "metrics"):
        if groups.get(name):
            out.append(name)
            out += [row(n, "  ") + (f"   (weight {n.weight:g})" if n.role == "loss" else "") for n in groups[name]]
    out.append("")
    out.append("order: " + " -> ".join(flow.order))
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

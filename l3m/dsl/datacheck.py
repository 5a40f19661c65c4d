"""Check document masking and data mixtures, which span several nodes of a program.

- E830: a source's optional port is bound where the source cannot give it (a `segments` port on a
  byte stream or an unpacked text source: the class's `port_problem` says why), a key named after
  one optional port is bound to another (`-> text, label` on image?, text?, label?), or a `DocumentMask`
  has neither `segments` bound nor an `eos_id` to find documents in `tokens`.
- E831: a `Mixture` names a data entry that does not exist (or itself, another mixture, or `train`),
  its weights are not positive or not one per source, or a part does not write a key the mixture
  writes.
"""

from __future__ import annotations

import inspect
from typing import Any

from l3m import registry
from l3m.dsl.diagnostics import Diagnostic, did_you_mean
from l3m.dsl.ir import Node, Program, Span

MIXTURE = "Mixture"


def check_data(program: Program) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    for node in program.nodes:
        if not node.valid:
            continue
        if node.role == "source":
            diags += _source_ports(node)
            if node.call.type_name == MIXTURE:
                diags += _mixture(program, node)
        elif node.role == "block" and node.call.type_name == "DocumentMask":
            diags += _document_mask(node)
    return diags


def _args(node: Node) -> dict[str, Any]:
    """The node's constructor arguments by name, defaults filled in."""
    entry = registry.lookup(node.call.type_name)
    if entry is None:
        return dict(node.call.kwargs)
    try:
        params = list(entry.signature.parameters.values())
    except (TypeError, ValueError):
        return dict(node.call.kwargs)
    out = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    out.update(node.call.kwargs_for(entry.signature))
    return out


def _crossed_ports(node: Node, entry: registry.Entry) -> list[Diagnostic]:
    """A key named after another of the source's optional ports: `-> text, label` on a source whose
    ports are image?, text?, label? binds `text` to the image port (positional lists go in order)."""
    optional = [p.name for p in entry.outputs if p.optional and not p.variadic]
    out = []
    for b in node.writes:
        if b.port in optional and b.key in optional and b.key != b.port:
            named = ", ".join(f"{k} = {k}" for k in (w.key for w in node.writes) if k in optional)
            out.append(Diagnostic("E830", f"data source '{node.name}' ({node.call.type_name}) binds key '{b.key}' to "
                                  f"its '{b.port}' port: its optional ports go in the order "
                                  f"{', '.join(optional)}", b.span, f"bind them by name: `-> ({named})`"))
    return out[:1]  # one mistake (a positional list), said once


def _source_ports(node: Node) -> list[Diagnostic]:
    entry = registry.lookup(node.call.type_name)
    crossed = _crossed_ports(node, entry) if entry is not None else []
    if crossed:
        return crossed
    problem = entry.hook("port_problem") if entry is not None else None
    if problem is None:
        return []
    args = _args(node)
    out = []
    for b in node.writes:
        why = problem(b.port, args) if b.port else None
        if why:
            out.append(Diagnostic("E830", f"data source '{node.name}' ({node.call.type_name}) cannot write the "
                                  f"'{b.port}' port: {why}", b.span))
    return out


def _document_mask(node: Node) -> list[Diagnostic]:
    if "segments" in node.ports_in():
        return []
    eos = _args(node).get("eos_id")
    if isinstance(eos, int) and not isinstance(eos, bool):
        return []
    return [Diagnostic("E830", f"block '{node.name}' (DocumentMask) has no document ids: `segments` is not bound "
                       "and there is no eos_id to find documents in `tokens`", node.call.type_span,
                       "read a packed source's segments by name: `DocumentMask() (segments = segments) -> mask`, "
                       "or give eos_id")]


def _mixture(program: Program, node: Node) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    call = node.call
    names = call.kwargs.get("sources")
    weights = call.kwargs.get("weights")
    names_span: Span = call.kwarg_spans.get("sources", call.type_span)
    weights_span: Span = call.kwarg_spans.get("weights", call.type_span)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return out  # E205 already says what the type should be
    by_name = {n.name: n for n in program.of_role("source")}
    if not names:
        out.append(Diagnostic("E831", f"Mixture '{node.name}' names no sources", names_span))
    seen: set[str] = set()
    for name in names:
        part = by_name.get(name)
        if name in seen:
            out.append(Diagnostic("E831", f"Mixture '{node.name}' names '{name}' twice", names_span))
        seen.add(name)
        if part is None:
            out.append(Diagnostic("E831", f"Mixture '{node.name}' names '{name}', which is not an entry of the "
                                  "data section", names_span,
                                  did_you_mean(name, [n for n in by_name if n != node.name])))
        elif part is node or part.call.type_name == MIXTURE:
            out.append(Diagnostic("E831", f"Mixture '{node.name}' names '{name}', which is a Mixture itself; "
                                  "name the sources directly", names_span))
        elif name == "train":
            out.append(Diagnostic("E831", f"Mixture '{node.name}' names 'train', the training source; give the "
                                  "part another name", names_span))
        else:
            missing = [k for k in node.write_keys if k not in part.write_keys]
            if missing:
                out.append(Diagnostic("E831", f"Mixture '{node.name}' writes {', '.join(map(repr, missing))}, but "
                                      f"its source '{name}' does not", part.span,
                                      "every source of a mixture must write every key the mixture writes",
                                      [("the mixture is declared here", node.span)]))
    if isinstance(weights, list):
        if len(weights) != len(names):
            out.append(Diagnostic("E831", f"Mixture '{node.name}' has {len(names)} sources but {len(weights)} "
                                  "weights", weights_span, "give one weight per source, in the same order"))
        bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0]
        if bad:
            out.append(Diagnostic("E831", f"Mixture '{node.name}' weights must be positive numbers, not "
                                  f"{bad[0]!r}", weights_span))
    if not node.writes:
        out.append(Diagnostic("E831", f"Mixture '{node.name}' writes no keys", call.type_span,
                              "bind the keys its sources write: `Mixture(...) -> tokens, targets`"))
    return out

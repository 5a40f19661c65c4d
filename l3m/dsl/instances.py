"""Diagnostics about imported templates, placed where the user can act on them.

A check that runs after resolution (shapes, parameters, references) reports at the template's line in
the imported file, where the block is written. The mistake is usually in the user's file, in the
arguments of the instance, so each such diagnostic carries its import chain (editors then show it at
the `import`) and a note at every instance of the template in the file being checked.
"""

from __future__ import annotations

from dataclasses import replace

from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Node, Program, Span


def place_in_root(program: Program, diags: list[Diagnostic], chains: dict[str, tuple[str, ...]]) -> list[Diagnostic]:
    """`diags` with import chains and instance notes added to those whose span is in an imported file."""
    out = []
    for d in diags:
        span = d.span
        if span is None or span.file == program.file or span.file not in chains:
            out.append(d)
            continue
        notes = list(d.notes)
        for where in _instances(program, _nodes_at(program, span)):
            note = (f"in the instance '{where[0]}' of the template, whose arguments may be at fault", where[1])
            if note not in notes:
                notes.append(note)
        out.append(replace(d, span=span if span.chain else replace(span, chain=chains[span.file]), notes=notes))
    return out


def _nodes_at(program: Program, span: Span) -> list[Node]:
    """The nodes written at `span`: the last node named on or before its line, in its file (a template
    instantiated twice gives two nodes with the same span)."""
    here = [n for n in program.nodes if n.span.file == span.file and n.span.line <= span.line]
    if not here:
        return []
    line = max(n.span.line for n in here)
    return [n for n in here if n.span.line == line]


def _instances(program: Program, nodes: list[Node]) -> list[tuple[str, Span]]:
    """For each node, the outermost model on its path that is declared in the checked file."""
    models = {m.path: m for m in program.models}
    found: list[tuple[str, Span]] = []
    for node in nodes:
        parts = node.model.split(".") if node.model else []
        for i in range(len(parts), 0, -1):
            m = models.get(".".join(parts[:i]))
            if m is not None and m.span.file == program.file:
                if (m.path, m.span) not in found:
                    found.append((m.path, m.span))
                break
    return found

"""E606: the `mesh` section's pipeline settings, checked without building the model.

`pp_split` names where a pipeline stage starts: a block path, or `<block>.layers.K` inside a
Transformer (the blocks the runtime splits between layers, l3m.dist.pp_units). A name that is
neither, too many names for `pp` stages, or a split at the model's very first block is an error
with a suggestion.
"""

from __future__ import annotations

import difflib

from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Program
from l3m.pp_partition import stage_count

LAYERED = ("Transformer", "CrossAttentionDecoder")  # the blocks a stage may start inside


def split_points(program: Program, order: list[str] | None = None) -> list[str]:
    """Every name `pp_split` accepts, in schedule order (`order`: block paths; default declaration order)."""
    nodes = {n.path: n for n in program.blocks}
    out: list[str] = []
    for path in order or list(nodes):
        node = nodes.get(path)
        if node is None:
            continue
        out.append(path)
        call = node.call
        depth = call.kwargs.get("depth")
        if (call.type_name in LAYERED and isinstance(depth, int) and depth > 1 and not call.kwargs.get("return_hidden")
                and not call.kwargs.get("share_layers")):
            out += [f"{path}.layers.{k}" for k in range(depth)]
    return out


def check_pp(program: Program, order: list[str] | None = None) -> list[Diagnostic]:
    section = program.sections.get("mesh")
    if section is None or "pp_split" not in section.values:
        return []
    names = section.values.get("pp_split") or []
    span = section.spans.get("pp_split") or section.span
    if not isinstance(names, list):
        return []  # the section's schema says it is a list of strings
    points = split_points(program, order)
    diags: list[Diagnostic] = []
    for name in names:
        if not isinstance(name, str) or name in points:
            continue
        close = difflib.get_close_matches(str(name), points, n=1, cutoff=0.6)
        diags.append(Diagnostic("E606", f"mesh.pp_split names '{name}', which is no block of the model nor a layer "
                                        "a pipeline stage can start at", span,
                                f"did you mean '{close[0]}'?" if close else
                                "give a block path or '<transformer block>.layers.K' (`l3m plan` lists them)"))
    pp = section.values.get("pp", 1)
    if isinstance(pp, int) and pp >= 1:
        stages = stage_count(pp, section.values.get("pp_schedule"), section.values.get("pp_virtual"))
        if len(set(names)) > stages - 1:
            diags.append(Diagnostic("E606", f"mesh.pp_split pins {len(set(names))} stage start(s), but {stages} "
                                            f"pipeline stage(s) have only {stages - 1} cut(s)", span))
    first = points[0] if points else None
    if first is not None and any(n in (first, f"{first}.layers.0") for n in names):
        diags.append(Diagnostic("E606", f"mesh.pp_split cannot start a stage at the model's first block '{first}' "
                                        "(the first stage always starts there)", span))
    return diags

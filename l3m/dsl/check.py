"""Check: the resolved program -> diagnostics about the whole dataflow and the declared mesh."""

from __future__ import annotations

from l3m.config import MeshConfig, resolve_mesh
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Program
from l3m.dsl.schedule import Dataflow, dataflow
from l3m.dsl.tokcheck import check_tokenizers


def check(program: Program, world_size: int | None = None) -> tuple[Dataflow, list[Diagnostic]]:
    flow = dataflow(program)
    diags = list(flow.diagnostics)
    diags += _check_mesh(program, world_size)
    diags += check_tokenizers(program)
    return flow, diags


def _check_mesh(program: Program, world_size: int | None) -> list[Diagnostic]:
    section = program.sections.get("mesh")
    if section is None:
        return []
    mesh = MeshConfig(**section.values)
    span = section.span or next(iter(section.spans.values()), None)
    try:
        resolve_mesh(mesh, world_size if world_size else _smallest_fit(mesh))
    except ValueError as e:
        where = f" (world size {world_size})" if world_size else ""
        return [Diagnostic("E601", f"the mesh cannot be laid out{where}: {e}", span)]
    return []


def _smallest_fit(mesh: MeshConfig) -> int:
    """Without a world size, check only what is wrong for any world size (sizes, several -1s)."""
    fixed = 1
    for v in (mesh.dp_replicate, mesh.dp_shard, mesh.tp, mesh.cp):
        fixed *= v if v > 0 else 1
    return fixed

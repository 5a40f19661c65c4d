"""Check: the resolved program -> diagnostics about the whole dataflow and the declared mesh."""

from __future__ import annotations

import importlib.util

from l3m.config import MeshConfig, resolve_mesh
from l3m.data.global_batch import TRAIN_SOURCE, derive_layout, source_batch_size, train_settings
from l3m.dsl.datacheck import check_data
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Program
from l3m.dsl.namecheck import check_names
from l3m.dsl.paramcheck import check_params
from l3m.dsl.ppcheck import check_pp
from l3m.dsl.refcheck import check_references
from l3m.dsl.schedule import Dataflow, dataflow
from l3m.dsl.shapes import ShapeTable, check_shapes
from l3m.dsl.sharecheck import check_shares
from l3m.dsl.tokcheck import check_tokenizers


def check(program: Program, world_size: int | None = None) -> tuple[Dataflow, list[Diagnostic]]:
    flow, diags, _ = check_all(program, world_size)
    return flow, diags


def check_all(program: Program, world_size: int | None = None) -> tuple[Dataflow, list[Diagnostic], ShapeTable]:
    """Every check, and the static shape of every key (`l3m.dsl.shapes`)."""
    flow = dataflow(program)
    diags = list(flow.diagnostics)
    diags += _check_mesh(program, world_size)
    diags += check_pp(program, flow.model_order())
    diags += _check_global_batch(program, world_size)
    diags += _check_float8(program)
    diags += check_tokenizers(program)
    diags += check_references(program, flow)
    diags += check_names(program)
    diags += check_data(program)
    diags += check_params(program)
    diags += check_shares(program)
    table, shape_diags = check_shapes(program, flow)
    return flow, diags + _one_message_per_cause(diags, shape_diags), table


def _one_message_per_cause(diags: list[Diagnostic], shape_diags: list[Diagnostic]) -> list[Diagnostic]:
    """Shape diagnostics that say something new: E812 already says when a `vocab` is smaller than the
    tokenizer, E106 that a key is the wrong one to read, E751 that integers are not floats."""
    def at(d: Diagnostic) -> tuple | None:
        return (d.span.file, d.span.line, d.span.col) if d.span else None

    said = {(d.code, at(d)) for d in [*diags, *shape_diags]}
    follow_on = {"E753": ("E812",), "E750": ("E106", "E751"), "E751": ("E106",)}
    return [d for d in shape_diags if not any((c, at(d)) in said for c in follow_on.get(d.code, ()))]


def _check_float8(program: Program) -> list[Diagnostic]:
    """E605 / W605 / W606: what lint can tell about `train.float8` (the device is checked when training starts)."""
    section = program.sections.get("train")
    if section is None or section.values.get("float8", False) is False:
        return []
    span = section.spans.get("float8")
    diags = []
    mesh = program.sections.get("mesh")
    tp = mesh.values.get("tp", 1) if mesh is not None else 1
    if isinstance(tp, int) and tp > 1:
        diags.append(Diagnostic("E605", f"train.float8 with tensor parallelism (mesh.tp = {tp}) is not supported yet",
                                span, "use mesh.tp = 1 (FSDP shards the float8 layers) or train.float8 = false"))
    if importlib.util.find_spec("torchao") is None:
        diags.append(Diagnostic("W605", "train.float8 needs the torchao package, which is not installed here",
                                span, "pip install 'l3m[float8]'"))
    if section.values.get("compile", "auto") in (False, "none"):
        diags.append(Diagnostic("W606", "train.float8 without train.compile is usually slower than bf16", span,
                                'set train.compile = "blocks" (or "model")'))
    return diags


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
    for v in (mesh.dp_replicate, mesh.dp_shard, mesh.tp, mesh.cp, mesh.pp):
        fixed *= v if v > 0 else 1
    if -1 in (mesh.dp_shard, mesh.cp) and mesh.ep > 0:  # the free dimension can make room for the ep ranks
        fixed *= mesh.ep
    return fixed


def _static_dp(program: Program, world_size: int | None) -> int | None:
    """The data-parallel size (dp_replicate × dp_shard) when it is known before launch."""
    section = program.sections.get("mesh")
    try:
        mesh = MeshConfig(**section.values) if section is not None else MeshConfig()
    except TypeError:
        return None
    if world_size:
        try:
            dims = resolve_mesh(mesh, world_size)
        except ValueError:
            return None  # E601 says why
        return dims["dp_replicate"] * dims["dp_shard"]
    if mesh.dp_replicate > 0 and mesh.dp_shard > 0:
        return mesh.dp_replicate * mesh.dp_shard
    return None


def _check_global_batch(program: Program, world_size: int | None) -> list[Diagnostic]:
    """E604: the train source's global batch cannot be split over the data-parallel ranks and
    accumulation steps (checked in full when the mesh fixes the data-parallel size, or with a
    world size; otherwise only what fails on any number of ranks)."""
    node = next((n for n in program.of_role("source") if n.name == TRAIN_SOURCE), None)
    if node is None:
        return []
    batch, span = source_batch_size(node)
    if batch is None:
        return []  # a batch below 1 is E604 on any number of ranks (derive_layout says so)
    accum, micro = train_settings(program)
    dp = _static_dp(program, world_size)
    try:
        if dp is not None:
            derive_layout(batch, dp, accum, micro)
        elif micro and accum:
            if batch % (micro * accum):
                raise ValueError(f"the global batch {batch} is not a multiple of train.micro_batch × train.grad_accum "
                                 f"= {micro * accum}, on any number of ranks")
        else:
            derive_layout(batch, 1, accum, micro)
    except ValueError as e:
        where = f" (world size {world_size})" if world_size else ""
        return [Diagnostic("E604", f"{e}{where}", span,
                           "the train source's batch_size is the global batch: it must be micro_batch × "
                           "data-parallel ranks (dp_replicate × dp_shard) × grad_accum")]
    return []

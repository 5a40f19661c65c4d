"""`l3m plan`: parameters, FLOPs, activation and per-rank memory of a program, before any GPU.

Everything is measured, not estimated from formulas: the model is built on the meta device
(no memory), parameters are counted from it, and one training step on a meta batch of one
sample is run under `FlopCounterMode` (forward and backward separately) with a
`saved_tensors_hooks` that records what autograd keeps for the backward pass.

Conventions of the numbers:

- FLOPs count multiply-adds as 2 (torch's flop counter); backward only differentiates
  trainable parameters, so freezing shows up. On meta, attention runs as its two batched
  matmuls over the full L×L scores (causal or not), as the counter's GPU formulas count it;
  torch's counter has no formula for the CPU attention kernel, so a CPU count misses it.
- Activations are the bytes saved for backward for one sample in the compute dtype
  (`train.param_dtype`, else `train.dtype`), without activation checkpointing; parameters and
  buffers the graph keeps are not activations and are left out.
- Per-rank memory: fp32 master parameters and fp32 gradients (trainable only), sharded over
  `dp_shard × tp` in dim-0 chunks padded as FSDP2 pads them; optimizer state in fp32 per
  trainable parameter (AdamW/Adam: 2, LARS/Lion/SGD with momentum: 1, SGD: 0).
- Peak memory per rank (`peak_memory`): a whole training step simulated on meta with the run's
  micro-batch, activation checkpointing, dtype and mesh (`l3m.plan_memory`); with a device
  (`l3m.devices`), whether it fits and what to change if not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from l3m.config import build_section, resolve_mesh
from l3m.devices import cpu_low_precision_note
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import KeyDecl, Node, Program
from l3m.model.blame import ProgramError, setting_span
from l3m.model.build import build_model, entry_for, instantiate, module_path
from l3m.model.core import MetaModel, bind_ports, params_by_block
from l3m.model.criterion import build_criterion
from l3m.model.fusion import plan_lm_loss_fusions
from l3m.model.patterns import unused_no_decay
from l3m.model.pruning import apply_row_pruning, plan_row_pruning
from l3m.plan_cp import cp_attention_flops, format_cp_attention
from l3m.registry import load_builtins, lookup

DTYPES: dict[str, torch.dtype] = {
    "float": torch.float32, "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "double": torch.float64,
    "long": torch.int64, "int64": torch.int64, "int": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "byte": torch.uint8,
    "bool": torch.bool,
}  # fmt: skip
# Optimizer state tensors kept per trainable parameter (all fp32).
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "LAMB": 2, "Lion": 1, "LARS": 1, "SGD": 1}
MOMENTUM_DEFAULTS = {"SGD": 0.0, "LARS": 0.9}  # no state when momentum = 0
FP32 = 4


def batch_layout(program: Program, dp: int, notes: list[str]) -> dict[str, int] | None:
    """The train source's global batch split over `dp` data-parallel ranks (None: not known)."""
    from l3m.data.global_batch import program_layout

    try:
        layout = program_layout(program, dp)
    except ValueError as e:
        notes.append(f"the global batch does not fit this mesh: {e}")
        return None
    if layout is None:
        return None
    return {"global": layout.global_batch, "micro_per_rank": layout.micro, "grad_accum": layout.accum,
            "data_parallel": layout.dp}


def plan(program: Program, world_size: int = 1, *, schedule: Sequence[str] | None = None,
         shapes: Any = None, device: Any = None, peak: bool = True) -> dict[str, Any]:
    """The plan of `program` on `world_size` ranks, as JSON-able numbers (see the module doc);
    with `device` (an `l3m.devices.Device`), whether the step fits it and what to change if not;
    `peak=False` skips the simulated training step (the trainer only wants the FLOPs).

    Mistakes that only the built model shows raise `ProgramError` (a block that cannot be built, a
    mesh the model cannot be split over)."""
    load_builtins()  # the live classes: the plan builds the model
    train = program.section("train")
    mesh = resolve_mesh(build_section("mesh", program.section("mesh")), world_size)
    dtype = train.get("dtype", "fp32")
    compute = train.get("param_dtype", "auto")
    compute = dtype if compute in (None, "auto") else compute
    notes: list[str] = []

    model = build_model(program, device="meta", schedule=schedule)
    prunings = plan_row_pruning(program)
    apply_row_pruning(model, prunings)  # FLOPs are those a training step runs
    criterion = build_criterion(program, device="meta", metrics=False) if program.of_role("loss") else None
    check_plan_mesh(program, model, mesh)
    from l3m.plan_experts import expert_memory
    names = [n for n, _ in model.named_parameters()]
    names += [f"criterion.{n}" for n, _ in criterion.named_parameters()] if criterion is not None else []
    notes += unused_no_decay(program, names)
    params = count_params(program, model, criterion)
    notes += block_notes(model)

    flops: dict[str, float] | None = None
    activation: int | None = None
    batch = meta_batch(program, needed_keys(model, criterion), notes)
    sample = batch
    if batch is not None:
        try:
            flops, activation = measure_step(model, criterion, batch, DTYPES[compute])
        except Exception as e:  # data-dependent ops cannot run on meta; the rest of the plan still holds
            notes.append(f"could not run a step on the meta device: {type(e).__name__}: {e}")

    trainable = [p for p in _all_params(model, criterion) if p.requires_grad]
    shard = mesh["dp_shard"] * mesh["tp"]
    states = optimizer_states(program, notes)
    mem = {
        "params": FP32 * sharded_numel(_all_params(model, criterion), shard),
        "grads": FP32 * sharded_numel(trainable, shard),
        "optimizer": states * FP32 * sharded_numel(trainable, shard),
    }
    mem["total"] = sum(mem.values())
    notes += memory_notes(mem, _all_params(model, criterion), shard)
    batch = batch_layout(program, mesh["dp_replicate"] * mesh["dp_shard"], notes)
    peak = peak_memory(program, sample if peak else None, mesh, batch, model, _all_params(model, criterion), states,
                       schedule, notes)
    on_this_cpu = device.name.startswith("cpu") if device is not None else not torch.cuda.is_available()
    advice = cpu_low_precision_note(compute) if on_this_cpu else None
    if advice:
        notes.append(advice)
    pipeline = None
    if mesh.get("pp", 1) > 1:  # the stages the trainer will run (l3m.plan_pp)
        from l3m.plan_pp import pipeline_plan

        pipeline = pipeline_plan(build_section("mesh", program.section("mesh")), mesh, model, criterion, sample,
                                 states, notes)
    fit = None
    if device is not None and peak is not None:
        fit = fit_device(program, sample, model, _all_params(model, criterion), states, schedule, peak, flops, device)
    return {
        "peak_memory": peak,
        "device": fit,
        "params": params,
        "flops_per_sample": flops,
        "cp_attention": cp_attention_flops(model, sample, mesh),  # l3m.plan_cp: per-rank attention FLOPs
        # l3m.model.fusion and l3m.model.pruning: training only
        "fusions": [f.describe() for f in [*plan_lm_loss_fusions(program), *prunings]],
        "activation_bytes_per_sample": activation,
        "memory_per_rank": mem,
        "experts": expert_memory(model, mesh),  # l3m.plan_experts: MoE expert bytes per rank
        "mesh": mesh,
        "world_size": world_size,
        "batch": batch,
        "dtype": dtype,
        "compute_dtype": compute,
        "optimizer": program.optimizer.type_name if program.optimizer else None,
        "notes": notes,
        "keys": key_shapes(shapes),
        "components": component_rows(program),
        "pipeline": pipeline,
    }


def peak_memory(program: Program, sample: Mapping[str, torch.Tensor] | None, mesh: Mapping[str, int],
                batch: Mapping[str, int] | None, model: nn.Module, params: Sequence[torch.Tensor], states: int,
                schedule: Sequence[str] | None, notes: list[str]) -> dict[str, Any] | None:
    """The predicted per-rank peak of a training step (`l3m.plan_memory`), or None with a note."""
    if sample is None:
        return None
    from l3m.plan_memory import predict, step_shape

    shape = step_shape(program, mesh, batch)
    try:
        return predict(program, sample, shape, model=model, params=params, optimizer_states=states,
                       schedule=schedule)
    except Exception as e:  # noqa: BLE001 - data-dependent ops cannot run on meta; the rest of the plan holds
        notes.append(f"could not simulate a training step on the meta device: {type(e).__name__}: {e}")
        return None


def fit_device(program: Program, sample: Mapping[str, torch.Tensor], model: nn.Module,
               params: Sequence[torch.Tensor], states: int, schedule: Sequence[str] | None,
               peak: Mapping[str, Any], flops: Mapping[str, float] | None, device: Any) -> dict[str, Any]:
    """`l3m.plan_memory.device_fit`, with suggestions when the step does not fit."""
    from l3m.plan_memory import StepShape, device_fit, predict, suggestions

    shape = StepShape(**peak["shape"])
    fit = device_fit(device, peak["peak"], flops["total"] if flops else None, shape)
    if not fit["fits"]:
        cache: dict = {}
        fit["suggestions"] = suggestions(shape, fit["usable"], lambda v: predict(
            program, sample, v, model=model, params=params, optimizer_states=states, schedule=schedule,
            cache=cache)["peak"])
    return fit


def component_rows(program: Program) -> list[dict[str, str]]:
    """Every component argument of every node (`attn = Attention(pos = Rope2d())`), with where it came from."""
    from l3m.dsl.ir import Call

    rows = []
    for n in program.nodes:
        for name, value in n.call.kwargs.items():
            if isinstance(value, Call):
                origin = n.call.origins.get(name)
                rows.append({"path": f"{n.path}.{name}", "value": str(value), "origin": str(origin or "")})
    return rows


def key_shapes(shapes: Any) -> list[dict[str, Any]]:
    """Every key version with its writer(s) and static shape (`l3m.dsl.shapes.ShapeTable`; "?" unknown)."""
    if shapes is None:
        return []
    return [{"key": r.key, "version": r.version, "writer": ", ".join(r.writers),
             "shape": str(r.type) if r.type.known else "?"} for r in shapes.rows()]


def check_plan_mesh(program: Program, model: nn.Module, mesh: Mapping[str, int]) -> None:
    """Refuse a tensor- or context-parallel size the model cannot be split over (as the run would, from
    the blocks' traits), at the mesh."""
    for dim in ("tp", "cp", "ep"):
        if mesh.get(dim, 1) <= 1:
            continue
        try:
            if dim == "ep":
                from l3m.dist.ep import check_ep

                check_ep(model, mesh["ep"])
            elif dim == "tp":
                from l3m.dist.tp import check_tp

                check_tp(model, mesh["tp"])
            else:
                from l3m.dist.cp import check_cp

                check_cp(model)
        except ValueError as e:
            raise ProgramError(Diagnostic("E601", f"the mesh cannot be laid out: {e}",
                                          setting_span(program, "mesh", dim))) from e


LARGE_MEMORY = 2**40  # 1 TiB per rank: more than any single accelerator holds


def memory_notes(mem: Mapping[str, int], params: Sequence[torch.Tensor], shard: int) -> list[str]:
    """What makes a per-rank figure surprising: more than any device holds, or ranks past the parameters' rows."""
    if any(v < 0 for v in mem.values()):  # cannot happen for a positive shard: a bug, not the user's
        raise AssertionError(f"negative memory figures {dict(mem)} for shard {shard}")
    notes = []
    if mem["total"] > LARGE_MEMORY:
        notes.append(f"{_bytes(mem['total'])} per rank is more than any single accelerator holds: shard over more "
                     "ranks (mesh.dp_shard, mesh.tp) or shrink the model")
    short = [p for p in params if p.dim() > 0 and p.shape[0] < shard]
    if short:
        notes.append(f"{len(short)} parameter tensor(s) have fewer rows than the {shard} ranks they are sharded over; "
                     "FSDP pads each rank's shard to a whole row, so memory per rank stops shrinking with more ranks")
    return notes


def block_notes(model: torch.nn.Module) -> list[str]:
    """What blocks say about themselves (a `plan_note()` method), once per distinct text, naming the first."""
    where: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        fn = getattr(module, "plan_note", None)
        text = fn() if callable(fn) else None
        if text:
            where.setdefault(text, []).append(name)
    return [f"{names[0]}{f' (and {len(names) - 1} more)' if len(names) > 1 else ''}: {text}"
            for text, names in where.items()]


# -- parameters -------------------------------------------------------------------------------


def _all_params(model: nn.Module, criterion: nn.Module | None) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in (model, criterion):
        if m is not None:
            for p in m.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def count_params(program: Program, model: MetaModel, criterion: nn.Module | None) -> dict[str, Any]:
    """Exact counts (a tied weight once, for its first owner) by model, stage and block path."""
    node_of = {module_path(n): n for n in program.blocks}
    by_model: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    by_block: dict[str, int] = {}
    total = trainable = 0
    for path, named in params_by_block(model).items():
        node = node_of[path]
        n = sum(p.numel() for _, p in named)
        total += n
        trainable += sum(p.numel() for _, p in named if p.requires_grad)
        stage = f"{node.model}.{node.stage}" if node.stage else node.model
        by_model[node.model] = by_model.get(node.model, 0) + n
        by_stage[stage] = by_stage.get(stage, 0) + n
        by_block[node.path] = n
    crit = sum(p.numel() for p in criterion.parameters()) if criterion is not None else 0
    crit_trainable = sum(p.numel() for p in criterion.parameters() if p.requires_grad) if criterion else 0
    return {
        "fixed_tables": fixed_table_numel(model),
        "total": total + crit,
        "trainable": trainable + crit_trainable,
        "by_model": by_model,
        "by_stage": by_stage,
        "by_block": by_block,
        "criterion": crit,
    }


def fixed_table_numel(model: nn.Module) -> int:
    """Elements of frozen tables (sin-cos position tables; each module's `fixed_tables` trait names its
    buffers): buffers here, but frozen parameters in PyTorch codebases that register them with
    `requires_grad=False` (the original ml-l3m), so plan shows both counts."""
    return sum(getattr(m, name).numel() for m in model.modules() for name in (getattr(m, "fixed_tables", None) or ()))


def sharded_numel(params: Iterable[torch.Tensor], shard: int) -> int:
    """Elements one rank holds when every parameter is cut into `shard` dim-0 chunks (padded)."""
    total = 0
    for p in params:
        if p.dim() == 0:
            total += 1
        else:
            total += math.ceil(p.shape[0] / shard) * (p.numel() // p.shape[0])
    return total


def optimizer_states(program: Program, notes: list[str]) -> int:
    """fp32 state tensors per trainable parameter for the program's optimizer."""
    call = program.optimizer
    if call is None:
        notes.append("no optimizer declared: optimizer state not counted")
        return 0
    name = call.type_name.rsplit(".", 1)[-1]
    if name not in OPTIMIZER_STATES:
        notes.append(f"optimizer {name!r} has no known state size; assuming 2 fp32 tensors per parameter")
        return 2
    if name in MOMENTUM_DEFAULTS:
        momentum = MOMENTUM_DEFAULTS[name]
        entry = lookup(call.type_name)
        kwargs = call.kwargs_for(entry.signature) if entry is not None else dict(call.kwargs)
        if entry is not None:  # the registered optimizer's own default wins over the usual one
            param = entry.signature.parameters.get("momentum")
            if param is not None and param.default is not param.empty:
                momentum = param.default
        if not kwargs.get("momentum", momentum):
            return 0
    return OPTIMIZER_STATES[name]


# -- a meta batch of one sample ---------------------------------------------------------------


def needed_keys(model: MetaModel, criterion: nn.Module | None) -> list[str]:
    """Keys a training step reads from the data: the model's inputs and the losses' other inputs."""
    keys = list(model.input_keys)
    written = set(model.output_keys)
    if criterion is not None:
        for rw in criterion.losses.values():
            keys += [k for k in rw.read_keys if k not in written and k not in keys]
    return keys


def _train_source(program: Program) -> Node | None:
    sources = sorted(program.of_role("source"), key=lambda n: n.index)
    return next((n for n in sources if n.name == "train"), sources[0] if sources else None)


def _source_batch(program: Program, notes: list[str]) -> dict[str, torch.Tensor]:
    """A CPU batch of one zero sample from the train source's `spec()`, then its generators' keys."""
    node = _train_source(program)
    if node is None:
        return {}
    if node.call.type_name == "Mixture":  # its samples are its first source's, under the same keys
        from l3m.data.sources.mixture import mixture_parts

        node = next(iter(mixture_parts(program, node)), node)
    where = f"{node.span}: {node.path}"
    try:
        spec = instantiate(node.call, entry_for(node.call, ("source",), where)).spec()
    except Exception as e:  # e.g. a missing dataset path: fall back to the declared keys
        notes.append(f"{node.path}: no spec() ({type(e).__name__}: {e}); using declared key shapes")
        return {}
    ports = node.ports_out()
    batch = {
        ports[p]: torch.zeros((1, *shape), dtype=dtype) for p, (shape, dtype) in spec.items() if p in ports
    }
    for gen in sorted(program.of_role("generator"), key=lambda n: n.index):
        if not all(k in batch for k in gen.read_keys):
            continue
        where = f"{gen.span}: {gen.path}"
        try:
            entry = entry_for(gen.call, ("generator",), where)
            args, kwargs = bind_ports(entry.inputs, [(b.port, b.key) for b in gen.reads], where)
            fn = instantiate(gen.call, entry)
            out = fn(
                *[batch[k] for k in args],
                **{p: batch[k] for p, k in kwargs.items()},
                rng=torch.Generator().manual_seed(0),
            )
        except Exception as e:
            notes.append(f"{gen.path}: could not run on a sample ({type(e).__name__}: {e})")
            continue
        outs = out if isinstance(out, tuple) else (out,)
        names = [p.name for p in entry.outputs]
        written = gen.ports_out()
        batch.update(
            {written[p]: v for p, v in zip(names, outs) if p in written and isinstance(v, torch.Tensor)}
        )
    return batch


def _declared_shape(decl: KeyDecl, symbols: Mapping[str, Any]) -> tuple[int, ...] | None:
    if decl.shape is None:
        return None
    dims = []
    for d in decl.shape:
        value = d if isinstance(d, int) else symbols.get(str(d))
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        dims.append(value)
    return tuple(dims)


def meta_batch(program: Program, keys: Sequence[str], notes: list[str]) -> dict[str, torch.Tensor] | None:
    """Meta tensors for `keys` with batch size 1: from the data when it can say, else `keys { }`.

    Symbolic dimensions of declared keys take their values from `let`s, from keys the data
    produced (`tokens: long[B, N]` with a 256-token sample gives N = 256), and `B` = 1.
    """
    batch = _source_batch(program, notes)
    symbols: dict[str, Any] = {k: v for k, v in program.lets.items() if isinstance(v, int)}
    for key, t in batch.items():
        decl = program.keys.get(key)
        if decl is not None and decl.shape is not None and len(decl.shape) == t.dim():
            for d, size in zip(decl.shape, t.shape):
                if isinstance(d, str) and re.fullmatch(r"[A-Za-z_]\w*", d):
                    symbols.setdefault(d, int(size))
    symbols["B"] = 1
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key in keys:
        if key in batch:
            out[key] = torch.empty(batch[key].shape, dtype=batch[key].dtype, device="meta")
            continue
        decl = program.keys.get(key)
        shape = _declared_shape(decl, symbols) if decl is not None else None
        if shape is None or decl.dtype not in DTYPES:
            missing.append(key)
            continue
        out[key] = torch.empty(shape, dtype=DTYPES[decl.dtype], device="meta")
    if missing:
        notes.append(
            f"no shape known for {', '.join(missing)}: declare it (`keys {{ {missing[0]}: float[B, N] }}`) "
            "to count FLOPs and activations"
        )
        return None
    return out


# -- one step on meta -------------------------------------------------------------------------


def measure_step(
    model: MetaModel, criterion: nn.Module | None, batch: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> tuple[dict[str, float], int]:
    """FLOPs (forward, backward) and bytes saved for backward of one step on meta tensors."""
    if dtype != torch.float32:
        model = model.to(dtype)
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    owned = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in owned:
            saved[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as fwd:
        d = model(batch)
        if criterion is not None:
            loss = criterion(d)[0]
        else:
            outs = [v for v in d.values() if isinstance(v, torch.Tensor) and v.requires_grad]
            loss = sum((v.float().sum() for v in outs), torch.zeros((), device="meta"))
    backward = 0
    if loss.requires_grad:
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        backward = bwd.get_total_flops()
    forward = fwd.get_total_flops()
    return {"forward": forward, "backward": backward, "total": forward + backward}, sum(saved.values())


# -- the human table --------------------------------------------------------------------------


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:g} {unit}".rstrip()


def _bytes(x: float) -> str:
    for scale, name in ((2**60, "EiB"), (2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {name}"
    return f"{int(x)} B"


def format_plan(p: Mapping[str, Any]) -> str:
    """The plan as a plain-text table."""
    params = p["params"]
    lines = [f"{'parameters':<28}{params['total']:>16,}   trainable {params['trainable']:,}"]
    if params.get("fixed_tables"):
        fixed = params["fixed_tables"]
        lines.append(f"{'fixed sin-cos tables':<28}{fixed:>16,}   buffers; counted as frozen parameters: "
                     f"{params['total'] + fixed:,}")
    for title, table in (
        ("by model", params["by_model"]),
        ("by stage", params["by_stage"]),
        ("by block", params["by_block"]),
    ):
        lines.append(f"  {title}")
        lines += [f"    {name:<24}{n:>16,}" for name, n in table.items()]
    if params.get("criterion"):
        lines.append(f"    {'(losses)':<24}{params['criterion']:>16,}")
    flops = p["flops_per_sample"]
    if flops is not None:
        lines.append(
            f"{'FLOPs per sample':<28}{_si(flops['total'], 'FLOP'):>16}   "
            f"forward {_si(flops['forward'], 'FLOP')}, backward {_si(flops['backward'], 'FLOP')}"
        )
    lines += format_cp_attention(p, _si)  # l3m.plan_cp
    lines += list(p.get("fusions") or [])
    act = p["activation_bytes_per_sample"]
    if act is not None:
        lines.append(
            f"{'activations per sample':<28}{_bytes(act):>16}   saved for backward, {p['compute_dtype']}, no checkpointing"
        )
    mesh = ", ".join(f"{k}={v}" for k, v in p["mesh"].items())
    lines.append(
        f"{'memory per rank':<28}{_bytes(p['memory_per_rank']['total']):>16}   world {p['world_size']}: {mesh}"
    )
    for part in ("params", "grads", "optimizer"):
        lines.append(f"    {part:<24}{_bytes(p['memory_per_rank'][part]):>16}")
    from l3m.plan_memory import format_peak

    lines += format_peak(p, _bytes)
    from l3m.plan_pp import format_pipeline

    lines += format_pipeline(p, _si, _bytes)
    from l3m.plan_experts import format_experts

    lines += format_experts(p, _bytes)
    b = p.get("batch")
    if b:
        lines.append(f"{'global batch':<28}{b['global']:>16,}   samples per optimizer step, all ranks")
        lines.append(f"{'micro-batch per rank':<28}{b['micro_per_rank']:>16,}   × {b['data_parallel']} data-parallel "
                     f"rank(s) × {b['grad_accum']} accumulation step(s)")
    keys = p.get("keys") or []
    if keys:
        kw = max(len(k["key"]) for k in keys) + 2
        ww = max(len(k["writer"]) for k in keys) + 2
        lines.append("keys")
        lines += [f"    {k['key']:<{kw}}{k['writer']:<{ww}}{k['shape']}" for k in keys]
    comps = p.get("components") or []
    if comps:
        pw = max(len(c["path"]) for c in comps) + 2
        lines.append("components")
        lines += [f"    {c['path']:<{pw}}{c['value']}   ({c['origin']})" for c in comps]
    lines += [f"note: {n}" for n in p.get("notes", [])]
    return "\n".join(lines)

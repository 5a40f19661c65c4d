"""Per-rank PEAK memory of one training step, predicted by running the step on the meta device.

Why a simulation and not formulas: every block (extensions included) saves what it saves for
backward, and the peak depends on when tensors die (the loss's logits gradient, the optimizer's
temporaries), which no per-block formula follows. So the planner builds the model on meta as
`l3m train` does (activation checkpointing applied by `l3m.dist.ac`), builds the criterion and
the optimizer, and runs a training step on a meta batch of one micro-batch under torch's
`MemTracker` (a dispatch mode that follows every storage by kind), after an optimizer step on zero
gradients has created the optimizer state: the steady state of every step after the first.

What the simulation cannot see is then added from the mesh and the precision settings:

- sharding: parameters (fp32 masters), gradients and optimizer state are scaled from the
  simulated (whole-model) figures to one rank's dim-0 shard over `dp_shard × cp × tp`
  (FSDP2 pads each shard to whole rows); activations and temporaries divide by `tp × cp`
  (tensor parallelism splits heads and MLP width, context parallelism the sequence);
- FSDP buffers (`dp_shard × cp > 1`): the root unit's gathered weights, two gathered layers
  (the current one and the prefetched next) in `param_dtype`, and one layer's unsharded
  gradients in `reduce_dtype` for the reduce-scatter;
- attention: the meta device has only SDPA's math fallback, which keeps the L x L scores; the
  simulation stands in what the fused kernels of a GPU (and of the CPU) keep instead; likewise
  MoE experts keep only their inputs, as their custom operator does. On a CPU without AMX, short
  bf16 attention keeps float32 copies of q, k and v instead (`attention.fp32_attention`), which the
  simulation, planning for any device, does not (llm_bytes in bf16: 4.6% more than planned);
- autocast (`train.dtype` bf16/fp16): the step runs with the model cast to the compute dtype;
  parameters, gradients and optimizer state are counted in fp32 as training keeps them, and,
  unless FSDP already gathers weights in low precision, autocast's low-precision weight copies
  (cached in the forward, saved for the backward) are added.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from unittest.mock import patch

import torch
import torch.nn.functional as F
from torch import nn

from l3m.dsl.ir import Program

FP32 = 4
KINDS = {"Parameter": "params", "Buffer": "buffers", "Gradient": "grads", "Activation": "activations",
         "Temp": "temporaries", "Optstate": "optimizer", "Other": "other"}
AC_MODES = ("none", "full", "selective", "mlp")


@dataclass(frozen=True)
class StepShape:
    """What one rank runs per optimizer step: the knobs the memory depends on."""

    micro: int = 1  # samples per forward on this rank
    accum: int = 1  # micro-batches per optimizer step
    ac: str = "none"  # train.activation_checkpointing
    dtype: str = "fp32"  # train.dtype (autocast)
    param_dtype: str = "auto"  # FSDP2 gather dtype
    reduce_dtype: str = "fp32"  # FSDP2 reduce-scatter dtype
    dp_shard: int = 1
    dp_replicate: int = 1
    tp: int = 1
    cp: int = 1
    grad_clip: float = 0.0
    reshard_after_forward: bool = True

    @property
    def shard(self) -> int:
        return self.dp_shard * self.cp * self.tp

    @property
    def fsdp(self) -> bool:
        return self.dp_shard * self.cp > 1

    @property
    def gather_dtype(self) -> str:
        return self.dtype if self.param_dtype in (None, "auto") else self.param_dtype


def step_shape(program: Program, mesh: Mapping[str, int], batch: Mapping[str, int] | None) -> StepShape:
    """The program's own step shape on `mesh` (micro-batch 1 when the batch layout is not known)."""
    from l3m.config import build_section

    train = build_section("train", program.section("train"))
    return StepShape(
        micro=batch["micro_per_rank"] if batch else 1, accum=batch["grad_accum"] if batch else 1,
        ac=train.activation_checkpointing, dtype=train.dtype, param_dtype=train.param_dtype,
        reduce_dtype=train.reduce_dtype, dp_shard=mesh.get("dp_shard", 1), dp_replicate=mesh.get("dp_replicate", 1),
        tp=mesh.get("tp", 1), cp=mesh.get("cp", 1), grad_clip=float(train.grad_clip or 0.0),
        reshard_after_forward=bool(train.reshard_after_forward),
    )


def _bytes_of(dtype: str) -> int:
    from l3m.plan import DTYPES

    return torch.empty((), dtype=DTYPES[dtype]).element_size()


# -- the simulation ---------------------------------------------------------------------------


def _micro_batch(one: Mapping[str, torch.Tensor], micro: int) -> dict[str, torch.Tensor]:
    return {k: torch.empty((micro, *v.shape[1:]), dtype=v.dtype, device="meta") for k, v in one.items()}


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash, memory-efficient, the CPU flash kernel) keeps for backward:
    q, k, v, the output and a float32 log-sum-exp per query, never the L x L scores that the meta
    device's math fallback would materialise."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
                is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    return _FusedAttention.apply(q, k, v)


@contextmanager
def _moe_as_on_devices() -> Iterator[None]:
    """MoE blocks run their expert loop under autograd on meta (for FLOP counting); on a device the
    experts are one custom operator that keeps only its inputs and recomputes in the backward.
    The simulation recomputes too, so it keeps what the operator keeps."""
    try:
        from l3m.model.blocks import moe
    except ImportError:
        yield
        return
    loop = moe._run_experts

    def recomputed(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(loop, *args, use_reentrant=False, **kwargs)

    with patch.object(moe, "_run_experts", recomputed):
        yield


class _NoHook:
    """A hook handle for a hook that was never installed."""

    def remove(self) -> None:
        pass


_NO_HOOK = _NoHook()


def simulate_step(program: Program, one_sample: Mapping[str, torch.Tensor], shape: StepShape, *,
                  schedule: Sequence[str] | None = None) -> dict[str, int]:
    """Bytes by kind at the peak of a steady-state training step on meta (one process, no mesh),
    plus `"peak"` (their sum) and `"numel"`/`"trainable"`/`"elem"` to rescale them."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from l3m.dist.ac import apply_ac
    from l3m.model.build import build_model
    from l3m.model.criterion import build_criterion
    from l3m.plan import DTYPES

    model = build_model(program, device="meta", schedule=schedule)
    from l3m.model.pruning import apply_training_rewrites

    apply_training_rewrites(model, program)  # as a training session runs it
    apply_ac(model, shape.ac)
    try:
        criterion = build_criterion(program, device="meta")
    except Exception:  # noqa: BLE001 - a metric that cannot be built on meta: losses only
        criterion = build_criterion(program, device="meta", metrics=False)
    compute = DTYPES[shape.gather_dtype if shape.fsdp else shape.dtype]
    if compute != torch.float32:
        model.to(compute)
        criterion.to(compute)
    named = list(model.named_parameters())
    seen = {id(p) for _, p in named}
    named += [(f"criterion.{n}", p) for n, p in criterion.named_parameters() if id(p) not in seen]
    optimizer = meta_optimizer(program, named)
    batch = _micro_batch(one_sample, shape.micro)
    if compute != torch.float32:
        batch = {k: v.to(compute) if v.is_floating_point() else v for k, v in batch.items()}
    accum = min(shape.accum, 2)  # from the second micro-batch on, every one looks alike

    tracker = MemTracker()
    # MemTracker hooks every parameter's gradient, which a frozen one (`freeze`, a LoRA base) cannot take:
    # mark those as hooked already, with handles that remove nothing.
    for frozen in (p for _, p in named if not p.requires_grad):
        tracker._param_to_grad_hook_handles[frozen] = (_NO_HOOK, _NO_HOOK)

    def step(tracking: bool = False) -> None:
        for _ in range(accum):
            d = model(batch)  # held through the backward, as the trainer holds it
            total = criterion.forward_stats(d)[0]
            (total / accum).backward()
            if tracking:  # the tracker follows one call per module; its device peaks stay
                tracker.reset_mod_stats()
        with_grad = [p for _, p in named if p.grad is not None]
        if shape.grad_clip > 0 and with_grad:
            torch.nn.utils.clip_grad_norm_(with_grad, shape.grad_clip)
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in with_grad:
                p.grad = None

    if optimizer is not None:  # the state every step after the first finds, without a whole first step
        for p in (p for _, p in named if p.requires_grad):
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with patch.object(F, "scaled_dot_product_attention", _fused_sdpa), _moe_as_on_devices():
        tracker.track_external(model, criterion, *([optimizer] if optimizer is not None else []))
        with tracker:
            step(tracking=True)
    snap = tracker.get_tracker_snapshot("peak").get(torch.device("meta"), {})
    out = {name: 0 for name in KINDS.values()}
    for kind, value in snap.items():
        label = KINDS.get(str(getattr(kind, "value", kind)))
        if label is not None:
            out[label] += int(value)
    params = [p for _, p in named]
    out["numel"] = sum(p.numel() for p in params)
    out["trainable"] = sum(p.numel() for p in params if p.requires_grad)
    out["inputs"] = sum(v.numel() * v.element_size() for v in batch.values())  # the loader's batch
    out["elem"] = torch.empty((), dtype=compute).element_size()
    out["peak"] = sum(out[k] for k in KINDS.values()) + out["inputs"]
    return out


def meta_optimizer(program: Program, named: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer | None:
    """The program's optimizer over meta parameters; a fused kernel (which has no meta form) runs as
    the per-parameter loop instead: neither keeps whole-model temporaries."""
    from l3m.registry import lookup
    from l3m.train.session import RUNTIME_PARAMS, call_factory

    call = program.optimizer
    if call is None:
        return None
    entry = lookup(call.type_name)
    if entry is None or not call.kwargs.get("fused"):
        return call_factory(call, "optimizer", named)
    sig = entry.signature
    kwargs = call.kwargs_for(sig.replace(parameters=list(sig.parameters.values())[RUNTIME_PARAMS.get("optimizer", 0):]))
    kwargs["fused"] = False
    if "foreach" in sig.parameters:
        kwargs["foreach"] = False
    return entry.obj(named, **kwargs)


# -- from the simulation to one rank of the mesh ----------------------------------------------


def fsdp_unit_numels(model: nn.Module) -> tuple[int, int]:
    """(largest repeated layer, the root: everything outside the repeated layers), in elements."""
    from l3m.dist.units import repeated_layers

    in_layers: set[int] = set()
    largest = 0
    for layers in repeated_layers(model):
        for layer in layers:
            ps = [p for p in layer.parameters() if id(p) not in in_layers]
            in_layers |= {id(p) for p in ps}
            largest = max(largest, sum(p.numel() for p in ps))
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_layers)
    return largest, root


def rank_breakdown(sim: Mapping[str, int], shape: StepShape, *, params: Sequence[torch.Tensor],
                   layer_numel: int, root_numel: int, optimizer_states: int) -> dict[str, int]:
    """One rank's peak bytes by part (they add up to `"peak"`), from the whole-model simulation."""
    from l3m.plan import sharded_numel

    trainable = [p for p in params if p.requires_grad]
    elem = sim["elem"]
    full_params = max(sim["numel"] * elem, 1)
    full_grads = max(sim["trainable"] * elem, 1)
    full_states = max(optimizer_states * sim["trainable"] * elem, 1)
    shard_all = FP32 * sharded_numel(params, shard=shape.shard)
    shard_train = FP32 * sharded_numel(trainable, shard=shape.shard)
    split = shape.tp * shape.cp
    out = {
        "params": round(shard_all * min(sim["params"] / full_params, 1.0)),
        "grads": round(shard_train * min(sim["grads"] / full_grads, 1.0)),
        "optimizer": round(optimizer_states * shard_train * min(sim["optimizer"] / full_states, 1.0)),
        "activations": math.ceil(sim["activations"] / split),
        "temporaries": math.ceil((sim["temporaries"] + sim["other"]) / split),
        "buffers": sim["buffers"],
        "inputs": sim["inputs"],
        "autocast_copies": 0,
        "comm_buffers": 0,
    }
    low = _bytes_of(shape.gather_dtype)
    if shape.fsdp:  # the root stays gathered; the current and the prefetched layer; one layer's grads to reduce
        # without resharding after the forward, every unit is still gathered when the backward starts
        kept = (sim["numel"] - root_numel) if not shape.reshard_after_forward else 2 * layer_numel
        gathered = (root_numel + kept) * low // shape.tp
        out["comm_buffers"] = gathered + layer_numel * _bytes_of(shape.reduce_dtype) // shape.tp
    if shape.dtype != "fp32" and not (shape.fsdp and shape.gather_dtype != "fp32"):
        out["autocast_copies"] = sum(p.numel() for p in trainable) * _bytes_of(shape.dtype) // shape.tp
    out["peak"] = sum(out.values())
    return out


def predict(program: Program, one_sample: Mapping[str, torch.Tensor], shape: StepShape, *, model: nn.Module,
            params: Sequence[torch.Tensor], optimizer_states: int, schedule: Sequence[str] | None = None,
            cache: dict[tuple, dict[str, int]] | None = None) -> dict[str, Any]:
    """The per-rank peak of `shape`, its breakdown and the step shape it is for."""
    if shape.ac not in AC_MODES:
        raise ValueError(f"unknown activation_checkpointing {shape.ac!r}")
    if shape.tp > 1:  # a tensor-parallel size the model's heads or widths do not divide
        from l3m.dist.tp import check_tp

        check_tp(model, shape.tp)
    key = (shape.micro, min(shape.accum, 2), shape.ac, shape.dtype, shape.gather_dtype if shape.fsdp else None)
    cache = {} if cache is None else cache  # the mesh only rescales a simulation: variants of it reuse it
    if key not in cache:
        cache[key] = simulate_step(program, one_sample, shape, schedule=schedule)
    sim = cache[key]
    layer, root = fsdp_unit_numels(model)
    parts = rank_breakdown(sim, shape, params=params, layer_numel=layer, root_numel=root,
                           optimizer_states=optimizer_states)
    return {"peak": parts.pop("peak"), "breakdown": parts, "shape": shape_dict(shape),
            "simulated_single_process_peak": sim["peak"]}


def shape_dict(shape: StepShape) -> dict[str, Any]:
    return {k: getattr(shape, k) for k in StepShape.__dataclass_fields__}


def variants(shape: StepShape) -> list[tuple[str, StepShape]]:
    """What a user can change to fit a step, each as a step shape (the global batch stays the same)."""
    out: list[tuple[str, StepShape]] = []
    if shape.micro > 1:
        half = shape.micro // 2
        out.append((f"train.micro_batch = {half} (grad_accum {shape.accum * 2})",
                    replace(shape, micro=half, accum=shape.accum * 2)))
    for mode in ("selective", "full"):
        if shape.ac != mode and not (mode == "selective" and shape.ac == "full"):
            out.append((f"train.activation_checkpointing = {mode}", replace(shape, ac=mode)))
    out.append((f"mesh.dp_shard = {shape.dp_shard * 2} (world size x2, same micro-batch)",
                replace(shape, dp_shard=shape.dp_shard * 2)))
    out.append((f"mesh.tp = {shape.tp * 2} (world size x2)", replace(shape, tp=shape.tp * 2)))
    if shape.dtype == "fp32":
        out.append(("train.dtype = bf16", replace(shape, dtype="bf16")))
    return out


# -- a device: does the step fit, how long does it take, what to change -------------------------

MFU = 0.40  # the model FLOP utilisation the step time assumes


def device_fit(device: Any, peak: int, flops_per_sample: float | None, shape: StepShape) -> dict[str, Any]:
    """Whether a step with per-rank `peak` bytes fits `device` (a `l3m.devices.Device`) with its
    headroom, and the step time at `MFU` of the device's dense peak in the training dtype."""
    from l3m.devices import HEADROOM

    usable = int(device.memory * HEADROOM)
    out: dict[str, Any] = {"name": device.name, "memory": device.memory, "usable": usable, "headroom": HEADROOM,
                           "fits": peak <= usable, "peak": peak, "use_fraction": peak / device.memory,
                           "mfu": MFU, "step_s": None, "peak_flops": None, "flops_dtype": shape.dtype}
    rate = device.flops.get(shape.dtype)
    if rate and flops_per_sample:
        out["peak_flops"] = rate
        per_rank = flops_per_sample * shape.micro * shape.accum / (shape.tp * shape.cp)
        out["step_s"] = per_rank / (MFU * rate)
    return out


def suggestions(shape: StepShape, usable: int, predict_shape: Any) -> list[dict[str, Any]]:
    """Each variant of `shape` with its predicted peak (`predict_shape(shape) -> bytes`), fitting ones first."""
    rows = []
    for change, variant in variants(shape):
        try:
            peak = predict_shape(variant)
        except Exception as e:  # noqa: BLE001 - a variant the model cannot take (tp over too few heads)
            rows.append({"change": change, "peak": None, "fits": False, "why": f"{type(e).__name__}: {e}"})
            continue
        rows.append({"change": change, "peak": peak, "fits": peak <= usable})
    return sorted(rows, key=lambda r: (not r["fits"], r["peak"] if r["peak"] is not None else float("inf")))


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def format_peak(p: Mapping[str, Any], fmt_bytes: Any) -> list[str]:
    """The plan's peak-memory lines (`l3m.plan.format_plan` appends them)."""
    peak = p.get("peak_memory")
    if not peak:
        return []
    s = peak["shape"]
    mesh = f"dp_shard={s['dp_shard']}, tp={s['tp']}, cp={s['cp']}"
    lines = [f"{'peak memory per rank':<28}{fmt_bytes(peak['peak']):>16}   a training step: micro-batch {s['micro']}"
             f" x {s['accum']} accumulation, activation_checkpointing={s['ac']}, dtype={s['dtype']}, {mesh}"]
    lines += [f"    {part:<24}{fmt_bytes(v):>16}" for part, v in peak["breakdown"].items() if v]
    dev = p.get("device")
    if dev:
        verdict = "fits" if dev["fits"] else "does NOT fit"
        lines.append(f"{'device':<28}{dev['name']:>16}   {verdict}: {fmt_bytes(dev['peak'])} of "
                     f"{fmt_bytes(dev['memory'])} ({dev['use_fraction'] * 100:.0f}%; plan for at most "
                     f"{dev['headroom'] * 100:.0f}% = {fmt_bytes(dev['usable'])})")
        if dev["step_s"] is not None:
            lines.append(f"{'step time at 40% MFU':<28}{dev['step_s'] * 1e3:>13.2f} ms   {dev['flops_dtype']} peak "
                         f"{_rate(dev['peak_flops'])}, micro-batch x accumulation on one rank")
        elif dev["flops_dtype"]:
            lines.append(f"{'step time':<28}{'?':>16}   no {dev['flops_dtype']} FLOP/s known for this device")
        if not dev["fits"] and dev.get("suggestions"):
            lines.append("  to fit, change one of (predicted peak per rank):")
            for r in dev["suggestions"]:
                mark = "fits" if r["fits"] else "too big" if r["peak"] is not None else r.get("why", "")
                value = fmt_bytes(r["peak"]) if r["peak"] is not None else "?"
                lines.append(f"    {r['change']:<48}{value:>12}   {mark}")
    return lines

"""The pipeline part of `l3m plan` (`mesh { pp = N }`): the stages the trainer will run.

The split is the runtime's (l3m.dist.pp.choose_split: balanced by a FLOP proxy, `pp_split` pinned);
beside it, each stage's FLOPs per sample as measured on the meta device (forward and backward of its
blocks and layers), its parameters, the memory its weights, gradients and optimizer states take on
each rank, and the keys that cross into it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from l3m.config import MeshConfig
from l3m.model.core import MetaModel


def _unit_flops(model: MetaModel, criterion: nn.Module | None, sample: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """FLOPs (forward and backward) of every module of one step, by module path."""
    with FlopCounterMode(display=False) as counter:
        d = model(sample)
        if criterion is not None:
            loss = criterion(d)[0]
            if loss.requires_grad:
                loss.backward()
    prefix = f"{type(model).__name__}."
    return {k[len(prefix):]: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith(prefix)}


def measured_unit_flops(program: Any, model: MetaModel) -> dict[str, int] | None:
    """FLOPs of one sample's step by module path, on the meta device (what the split balances), or
    None when the program cannot say its batch's shapes or the step cannot run on meta. Every rank
    computes the same numbers, so every rank cuts alike."""
    from l3m.model.criterion import build_criterion
    from l3m.plan import meta_batch, needed_keys

    try:
        criterion = build_criterion(program, device="meta", metrics=False) if program.of_role("loss") else None
        sample = meta_batch(program, needed_keys(model, criterion), [])
        return _unit_flops(model, criterion, sample) if sample is not None else None
    except Exception:  # noqa: BLE001 - the split falls back to the parameter proxy (l3m.dist.pp_units)
        return None
    finally:
        for p in model.parameters():
            p.grad = None


def pipeline_plan(mesh_cfg: MeshConfig, mesh: Mapping[str, int], model: MetaModel, criterion: nn.Module | None,
                  sample: Mapping[str, torch.Tensor] | None, optimizer_states: int,
                  notes: list[str]) -> dict[str, Any] | None:
    """`{"schedule", "stages": [...]}`; None (with a note) when the model cannot be split so."""
    from l3m.dist.pp import choose_split, loss_reads
    from l3m.pp_partition import stage_ranks

    reads = loss_reads(criterion) if criterion is not None else []
    written = set(model.output_keys)
    flops: dict[str, int] = {}
    if sample is not None:
        try:
            flops = _unit_flops(model, criterion, sample)
        except Exception as e:  # noqa: BLE001 - data-dependent ops cannot run on meta; the split still holds
            notes.append(f"pipeline: no per-stage FLOPs (the meta step failed: {type(e).__name__}: {e})")
        finally:
            for p in model.parameters():
                p.grad = None
    try:
        split = choose_split(model, mesh_cfg, [k for k in reads if k in written], flops or None)
    except ValueError as e:
        notes.append(f"pipeline: {e}")
        return None
    shard = mesh.get("dp_shard", 1)
    rank_of = stage_ranks(split.stages, mesh["pp"])
    stages = []
    for i in range(split.stages):
        units = split.stage_units(i)
        measured = None
        if flops:
            measured = sum(flops.get(u.name, 0) for u in units)
            measured += sum(flops.get(f"{u.block}.norm", 0) for u in units if u.layer is not None
                            and u.layer == u.layers - 1)
        stages.append({
            "stage": i,
            "rank": rank_of[i],
            "runs": split.describe(i),
            "units": len(units),
            "cost": split.cost(i),
            "flops_per_sample": measured,
            "param_bytes": split.param_bytes(i),
            "state_bytes_per_rank": split.param_bytes(i) * (2 + optimizer_states) // max(shard, 1),
            "receives": split.received(i),
            "from_batch": split.batch_keys(i),
            "sends": split.sends(i) if i == split.stages - 1 else split.received(i + 1),
        })
    return {"schedule": mesh_cfg.pp_schedule, "stages": stages}


def format_pipeline(p: Mapping[str, Any], si: Callable[[float, str], str], nbytes: Callable[[float], str]) -> list[str]:
    """The stage table of `l3m plan`."""
    pipe = p.get("pipeline")
    if not pipe:
        return []
    stages: Sequence[Mapping[str, Any]] = pipe["stages"]
    lines = [f"{'pipeline':<28}{len(stages):>16}   stages, {pipe['schedule']} (weights + grads + optimizer per rank)"]
    for s in stages:
        flops = si(s["flops_per_sample"], "FLOP") if s["flops_per_sample"] is not None else "?"
        lines.append(f"    stage {s['stage']} (pp rank {s['rank']}): {flops} per sample, "
                     f"{nbytes(s['param_bytes'])} parameters, {nbytes(s['state_bytes_per_rank'])} per rank")
        lines.append(f"      runs      {s['runs']}")
        if s["stage"] > 0:
            lines.append(f"      receives  {', '.join(s['receives']) or '-'}")
        lines.append(f"      batch     {', '.join(s['from_batch']) or '-'}   (each rank's own copy)")
    lines.append(f"      hands the losses  {', '.join(stages[-1]['sends']) or '-'}")
    return lines

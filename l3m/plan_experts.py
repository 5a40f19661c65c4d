"""The plan's expert-parameter line: how many bytes of MoE expert weights one rank holds on the mesh.

Experts are split three ways: by expert over `ep` ranks (`l3m.dist.ep`), by hidden unit over `tp` ranks
(`l3m.dist.ep_tp`, where the block's tensor-parallel plan says so), and FSDP-sharded over the `ep_dp` ranks
that hold the same experts (`l3m.dist.ep_fsdp`, along the dim it picks). Without `ep` they are ordinary
parameters, FSDP-sharded by dim 0 over `dp_shard x cp` like the rest. fp32 master weights; gradients and
optimizer state follow the same split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from l3m.traits import expert_parallel

FP32 = 4


def _tp_dims(module: nn.Module) -> dict[str, int]:
    """The hidden dim of each expert weight that the block's tensor-parallel plan splits ({} if none)."""
    plan = getattr(module, "tp_plan", None)
    style = (plan() if callable(plan) else plan or {}).get("")
    return dict(getattr(style, "shard_dims", {}))


def _chunk(shape: list[int], dim: int, ranks: int) -> list[int]:
    return [math.ceil(s / ranks) if d == dim else s for d, s in enumerate(shape)]


def expert_memory(model: nn.Module, mesh: Mapping[str, int]) -> dict[str, Any] | None:
    """Expert parameter bytes: in all, per rank on `mesh`, and per rank were they not FSDP-sharded over
    `ep_dp`; None when the model has no expert-parallel block."""
    from l3m.dist.ep_fsdp import even_dim

    ep, tp = mesh.get("ep", 1), mesh.get("tp", 1)
    dp_cp = mesh.get("dp_replicate", 1) * mesh.get("dp_shard", 1) * mesh.get("cp", 1)
    ep_dp = dp_cp // ep
    total = per_rank = unsharded = 0
    found = False
    for m in model.modules():
        names = expert_parallel(m)
        if not names or any(n not in m._parameters for n in names):  # a wrapper shows its block's traits
            continue
        found = True
        tp_dims = _tp_dims(m) if tp > 1 else {}
        for name in names:
            p = m._parameters[name]
            shape = list(p.shape)
            total += p.numel()
            shape = _chunk(shape, 0, ep)
            if name in tp_dims:
                shape = _chunk(shape, tp_dims[name], tp)
            unsharded += math.prod(shape)
            if ep > 1:
                if ep_dp > 1:
                    shape = _chunk(shape, even_dim(shape, ep_dp) or 0, ep_dp)
            else:  # ordinary parameters: FSDP over dp_shard x cp
                shape = _chunk(shape, 0, mesh.get("dp_shard", 1) * mesh.get("cp", 1))
            per_rank += math.prod(shape)
    if not found:
        return None
    return {"total": FP32 * total, "per_rank": FP32 * per_rank, "without_ep_dp_fsdp": FP32 * unsharded,
            "ep": ep, "ep_dp": ep_dp if ep > 1 else 1, "tp": tp if tp > 1 else 1}


def format_experts(p: Mapping[str, Any], fmt_bytes: Callable[[int], str]) -> list[str]:
    """The plan's expert line (`l3m.plan.format_plan` appends it)."""
    e = p.get("experts")
    if not e:
        return []
    how = f"ep={e['ep']} x tp={e['tp']}"
    if e["ep"] > 1 and e["ep_dp"] > 1:
        how += f", FSDP over ep_dp={e['ep_dp']} ({fmt_bytes(e['without_ep_dp_fsdp'])} without it)"
    elif e["ep"] == 1 and e["per_rank"] < e["total"]:
        how += ", FSDP over dp_shard x cp like the other weights"
    return [f"{'expert params per rank':<28}{fmt_bytes(e['per_rank']):>16}   of {fmt_bytes(e['total'])} "
            f"(fp32): {how}"]

"""Gradient clipping over parameters that live on different meshes, with one collective.

Under FSDP + tensor parallelism the gradients are a mix: 2-D DTensors (sharded over data and
tensor ranks), 1-D DTensors (layers that tensor parallelism replicates, sharded only by FSDP)
and, without FSDP, plain tensors that every rank holds whole. Torch's `clip_grad_norm_` wants
them on one mesh. Here each rank sums the squares of its own pieces, weighting each piece by the
fraction of the world it is one copy of (an element of a gradient sharded over k ranks is held
by world/k ranks), and one all-reduce over the world gives the squared norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import Shard, _StridedShard

_SHARDS = (Shard, _StridedShard)  # FSDP over a tensor-parallel dim uses the strided kind


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (the tensor itself when it is not a DTensor)."""
    return t.to_local() if isinstance(t, DTensor) else t


def shard_factor(t: torch.Tensor) -> int:
    """Over how many ranks a tensor's elements are split (1: every rank holds all of it)."""
    if not isinstance(t, DTensor):
        return 1
    return math.prod(t.device_mesh.size(i) for i, p in enumerate(t.placements) if isinstance(p, _SHARDS))


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def total_norm(grads: Iterable[torch.Tensor], norm_type: float = 2.0, pp: int = 1) -> torch.Tensor:
    """The norm of all gradients together, a plain float32 tensor with the same value on every rank.
    `pp`: pipeline stages, each holding its own parameters (one world/pp-th of the ranks holds a piece)."""
    grads = list(grads)
    if not grads:
        return torch.zeros(())
    world = _world()
    device = local(grads[0]).device
    if math.isinf(norm_type):
        acc = torch.zeros((), device=device)
        for g in grads:
            if local(g).numel():
                acc = torch.maximum(acc, local(g).detach().abs().max().float())
        if world > 1:
            dist.all_reduce(acc, op=dist.ReduceOp.MAX)
        return acc
    acc = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        piece = local(g).detach().float().abs().pow(norm_type).sum().double()
        acc += piece * (shard_factor(g) * pp / world)
    if world > 1:
        dist.all_reduce(acc)
    return acc.pow(1.0 / norm_type).float()


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    pp: int = 1) -> torch.Tensor:
    """Scale the gradients so that their total norm is at most `max_norm`; the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = total_norm(grads, norm_type, pp)
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(local(g).device, []).append(local(g))
    for device, group in by_device.items():
        torch._foreach_mul_(group, coef.to(device))
    return norm

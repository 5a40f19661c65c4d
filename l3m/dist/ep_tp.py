"""Tensor parallelism of MoE experts (`mesh.tp > 1`): every expert's hidden dimension split over the `tp` ranks.

A MoE's stacked expert weights are split as a dense feed-forward's are, expert by expert: `w1`/`w3`
(`[E, hidden, dim]`) column-wise (`Shard(1)`, each rank a slice of the hidden units), `w2`
(`[E, dim, hidden]`) row-wise (`Shard(2)`), as DTensors so checkpoints record whole tensors and reshard
to any `tp`. The router stays replicated: the `tp` ranks hold the same tokens, so they route them alike
and compute the same balance loss. Each rank runs its hidden slice of every expert; the partial outputs
are summed over `tp` (`ExpertTP.leave`), and the partial gradients of the expert inputs (the token rows
and their routing weights) are summed in the backward (`ExpertTP.enter`), as Megatron's f/g pair.
Under expert parallelism too (`ep x tp`), `l3m.dist.ep` splits these weights by expert over `ep` as well.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from l3m.model.losses import sum_across_ranks


class _SumGradients(torch.autograd.Function):
    """The identity whose backward sums the gradient over the group (each rank saw a slice of the hidden units)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ExpertTP:
    """The tensor-parallel group a MoE's experts are split over, and the two sums that split needs."""

    def __init__(self, group: dist.ProcessGroup, size: int) -> None:
        self.group, self.size = group, size

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """An input of the experts (rows or routing weights): its gradient summed over the ranks."""
        return _SumGradients.apply(x, self.group)

    def leave(self, y: torch.Tensor) -> torch.Tensor:
        """The experts' output: the ranks' partial sums over their hidden slices, added up."""
        return sum_across_ranks(y, self.group)  # its gradient, the same on every rank, passes


class ExpertTensorParallel(ParallelStyle):
    """The `tp_plan` style of a MoE block: `shard_dims[name]` is the hidden dimension of each stacked expert
    weight (1 for `[E, hidden, dim]`, 2 for `[E, dim, hidden]`); other parameters stay replicated."""

    def __init__(self, shard_dims: dict[str, int]) -> None:
        super().__init__()
        self.shard_dims = dict(shard_dims)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        for name, dim in self.shard_dims.items():
            p = module._parameters[name]
            if p is None or isinstance(p, DTensor):
                raise ValueError(f"{type(module).__name__}.{name} cannot be split over tp: it is "
                                 f"{'missing' if p is None else 'already distributed'}")
            split = distribute_tensor(p.detach(), device_mesh, [Shard(dim)], src_data_rank=None)
            module._parameters[name] = nn.Parameter(split, requires_grad=p.requires_grad)
        module.tp = ExpertTP(device_mesh.get_group(), device_mesh.size())
        return module

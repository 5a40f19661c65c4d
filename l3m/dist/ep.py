"""Expert parallelism (`mesh.ep > 1`): each of `ep` ranks holds `num_experts / ep` of every MoE's experts.

The `ep` ranks are taken from `dp_shard x cp` (`l3m.dist.mesh`): they hold different tokens. Each rank
routes its own tokens, computes the balance loss and applies the capacity cut on them exactly as a
single process would (so `ep` changes no result), then an all-to-all sends every kept (token, expert)
assignment to the rank that owns the expert, which runs its experts once each on the rows it received
(a grouped matmul where the device has one), and a second all-to-all brings the outputs back, where
they are weighted and summed into the tokens. Both all-to-alls are differentiable (the backward is the
reverse all-to-all), so gradients reach the router, the inputs and the experts.

Which parameters are split is each block's `expert_parallel` trait (`l3m.traits`): parameters stacked
by expert along dim 0 become DTensors sharded `Shard(0)` over the `ep` mesh (so checkpoints record
the whole tensor and reshard to any `ep`); experts already split over `tp` (`l3m.dist.ep_tp`) become
`[Shard(0), Shard(hidden)]` on the 2-D `(ep, tp)` mesh. The `ep_dp` ranks hold the same experts: in
training `l3m.dist.ep_fsdp` shards them over `ep_dp` with FSDP (which averages their gradients); without
it (`reduce_replicas`) they stay whole there and `_ExpertGrad` averages their gradients. An expert's
gradient on its owner sums the contributions of all `ep` ranks' tokens; scaled by `1 / ep` in the
backward and averaged over `ep_dp`, it is the average over all token-holding ranks that data
parallelism gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from l3m.dist.mesh import ParallelDims
from l3m.traits import expert_parallel


class _AllToAll(torch.autograd.Function):
    """`all_to_all_single` of rows with uneven splits; the backward sends the gradients back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class _ExpertGrad(torch.autograd.Function):
    """The identity on this rank's experts, whose backward turns the gradient (on an expert's owner, the sum
    over the `ep` ranks' tokens) into the data-parallel average: scaled by `1 / ep` and averaged over the
    `ep_dp` ranks that hold the same experts. Done in the backward rather than in a parameter hook, so it
    holds under gradient accumulation and survives the trainer's re-allocation of the parameters."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, scale: float, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.scale, ctx.group = scale, group
        return w.view_as(w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grad = grad * ctx.scale
        if ctx.group is not None:
            dist.all_reduce(grad, group=ctx.group)
            grad = grad / dist.get_world_size(ctx.group)
        return grad, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int],
               group: dist.ProcessGroup) -> torch.Tensor:
    """Rows `in_splits[j]` of `x` go to rank j; `out_splits[j]` rows come from rank j (differentiable)."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


class ExpertParallel:
    """This rank's share of the experts and the token exchange an expert-parallel MoE runs."""

    def __init__(self, group: dist.ProcessGroup, rank: int, size: int,
                 replicas: dist.ProcessGroup | None = None) -> None:
        self.group, self.rank, self.size, self.replicas = group, rank, size, replicas

    def local(self, w: torch.Tensor) -> torch.Tensor:
        """This rank's experts of a stacked weight (see `_ExpertGrad` for their gradient)."""
        w = w.to_local() if isinstance(w, DTensor) else w
        return _ExpertGrad.apply(w, 1.0 / self.size, self.replicas)

    def dispatch(self, x: torch.Tensor, expert: torch.Tensor, token: torch.Tensor, weight: torch.Tensor,
                 num_experts: int, compute: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> torch.Tensor:
        """The MoE output for this rank's tokens `x [..., dim]` (`T` of them), from the kept assignments
        `(expert, token, weight)` (global expert ids, experts numbered rank by rank, token indices into the
        flattened `x`), computed by the experts' owners: `compute(rows, counts)` runs this rank's experts on
        rows grouped by local expert. The output has the shape of `x` and is not a view (an FSDP-wrapped
        block must not return one)."""
        per_rank = num_experts // self.size
        flat = x.reshape(-1, x.shape[-1])
        order = torch.argsort(expert, stable=True)
        tok = token[order]
        counts = torch.bincount(expert, minlength=num_experts)
        # recv[i * per_rank + e]: how many rows rank i sends to this rank's local expert e
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.group)
        send_splits = counts.view(self.size, per_rank).sum(1).tolist()
        recv_by_source = recv.view(self.size, per_rank)
        recv_splits = recv_by_source.sum(1).tolist()
        got = all_to_all(flat[tok], recv_splits, send_splits, self.group)  # by source rank, then local expert
        local_expert = torch.repeat_interleave(torch.arange(per_rank, device=x.device).repeat(self.size),
                                               recv_by_source.reshape(-1))
        by_expert = torch.argsort(local_expert, stable=True)
        y = compute(got[by_expert], recv_by_source.sum(0).tolist())
        y = y[torch.argsort(by_expert)]  # back to the order the rows came in
        back = all_to_all(y, send_splits, recv_splits, self.group)
        out = x.new_zeros(x.shape)
        out.view(-1, x.shape[-1]).index_add_(0, tok, back * weight[order, None].to(x.dtype))
        return out


def check_ep(model: nn.Module, ep: int) -> None:
    """Refuse an `ep` that does not divide a block's number of experts."""
    for name, m in model.named_modules():
        for pname in expert_parallel(m):
            p = getattr(m, pname, None)
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"'{name}' ({type(m).__name__}) declares expert_parallel {pname!r}, "
                                 "which is not one of its parameters")
            if p.shape[0] % ep:
                raise ValueError(f"expert parallelism over {ep} ranks cannot split the {p.shape[0]} experts of "
                                 f"'{name}' ({type(m).__name__}): ep must divide its number of experts")


def apply_ep(model: nn.Module, dims: ParallelDims, reduce_replicas: bool = True) -> set[nn.Parameter]:
    """Split every expert-parallel block's expert parameters over the `ep` mesh (in place, on the meta
    device or not) and set its `ep`; the split parameters (the data-parallel FSDP must leave them alone).
    `reduce_replicas`: average the experts' gradients over `ep_dp` here (False when FSDP shards them there)."""
    check_ep(model, dims.ep)
    mesh = dims.submesh("ep")
    replicas = dims.group("ep_dp") if reduce_replicas else None
    state = ExpertParallel(mesh.get_group(), dims.coordinate("ep"), dims.ep, replicas)
    split: set[nn.Parameter] = set()
    for m in model.modules():
        names = expert_parallel(m)
        if not names:
            continue
        for pname in names:
            p = m._parameters[pname]
            rows = p.shape[0] // dims.ep
            mine = slice(state.rank * rows, (state.rank + 1) * rows)
            if isinstance(p, DTensor):  # split over tp already (l3m.dist.ep_tp): by expert over ep as well
                local = p.to_local().detach()[mine].clone()
                over, placements = dims.submesh("ep_tp"), [Shard(0), *p.placements]
            else:
                local = p.detach()[mine].clone()
                over, placements = mesh, [Shard(0)]
            d = nn.Parameter(DTensor.from_local(local, over, placements, run_check=False,
                                                shape=p.shape, stride=p.stride()),
                             requires_grad=p.requires_grad)
            m._parameters[pname] = d
            split.add(d)
        m.ep = state
    return split

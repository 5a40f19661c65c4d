"""Run as `torchrun --nproc_per_node=2 ep_worker.py` (gloo, CPU; 4 processes also check `ep_dp = 2`): an expert-parallel MoE (ep = 2) gives each
rank the outputs, balance loss and input/router gradients of the single-process MoE on that rank's tokens,
and its experts the gradients data parallelism averages over the ranks; dropless and capacity modes, with
uneven routing (some expert gets no token from some rank). Prints `OK ep` when every check passed."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

from l3m.config import MeshConfig
from l3m.dist.ep import apply_ep
from l3m.dist.mesh import build_mesh
from l3m.model.blocks.moe import MoE


def check(capacity_factor: float | None, top_k: int, rank: int, world: int) -> float:
    torch.manual_seed(0)
    ref = MoE(8, 16, num_experts=4, top_k=top_k, capacity_factor=capacity_factor, act="gelu")
    with torch.no_grad():  # a router that prefers expert 0: uneven splits, and drops under a capacity
        ref.router.weight[0] += 0.5
    xs = torch.randn(world, 2, 5, 8)  # every rank draws every rank's tokens, keeps its own
    gs = torch.randn(world, 2, 5, 8)
    grads = []
    for r in range(world):  # the reference: one process per rank's tokens, gradients averaged
        ref.zero_grad()
        x = xs[r].clone().requires_grad_(True)
        out, aux = ref(x)
        ((out * gs[r]).sum() + aux).backward()
        grads.append({n: p.grad.clone() for n, p in ref.named_parameters()} | {"x": x.grad, "out": out.detach(),
                                                                                "aux": aux.detach()})
    mine = grads[rank]
    mean = {n: sum(g[n] for g in grads) / world for n in ("w1", "w3", "w2")}

    dims = build_mesh(MeshConfig(dp_shard=world, ep=2))  # on 4 processes: 2 replicas of the experts
    moe = copy.deepcopy(ref)
    moe.zero_grad()
    split = apply_ep(moe, dims)
    assert len(split) == 3 and moe.ep is not None
    x = xs[rank].clone().requires_grad_(True)
    out, aux = moe(x)
    ((out * gs[rank]).sum() + aux).backward()
    torch.testing.assert_close(out, mine["out"], rtol=0, atol=1e-6)
    torch.testing.assert_close(aux, mine["aux"], rtol=0, atol=0)  # the balance loss: the rank's own, exactly
    torch.testing.assert_close(x.grad, mine["x"], rtol=0, atol=1e-6)
    torch.testing.assert_close(moe.router.weight.grad, mine["router.weight"], rtol=0, atol=1e-6)
    rows = slice(dims.coordinate("ep") * 2, dims.coordinate("ep") * 2 + 2)
    worst = 0.0
    for n in ("w1", "w3", "w2"):
        got = getattr(moe, n).grad.to_local()
        torch.testing.assert_close(got, mean[n][rows], rtol=0, atol=1e-6)
        worst = max(worst, float((got - mean[n][rows]).abs().max()))
    return worst


def main() -> None:
    from l3m.dist.mesh import init_distributed

    init_distributed("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    for cf, k in ((None, 1), (None, 2), (1.0, 2), (0.5, 1)):
        worst = check(cf, k, rank, world)
        if rank == 0:
            print(f"capacity_factor={cf} top_k={k}: max expert-gradient difference {worst:.2e}")
    dist.barrier()
    if rank == 0:
        print("OK ep")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""A worker for the expert tensor-parallel and expert-FSDP tests, run as `torchrun --nproc_per_node=N
ep_tp_worker.py MODE` (gloo, CPU). Prints `OK <mode>` when every check passed.

Modes:
- `tp` (2 processes): a MoE split over `tp = 2` (experts' hidden units; router replicated) gives the
  single-process outputs, balance loss and gradients (its expert gradients: slices of the whole ones);
- `ep_fsdp` (4 processes): a MoE split over `ep = 2 x tp = 2` matches the single-process MoE on each
  data-parallel rank's tokens; then a tiny MoE language model trained on `mesh { dp_shard = 4, ep = 2 }`
  (experts FSDP-sharded over `ep_dp = 2`: by expert where 4 experts leave 2 per `ep` rank, by hidden unit
  where 2 experts leave one) gives the losses, balance losses and weights of one process that accumulates
  the same four micro-batches, and stores half the expert bytes it would without FSDP;
- `ep_fsdp_tp` (8 processes, not in the suite: too heavy for a small machine): the same training on
  `mesh { dp_shard = 4, tp = 2, ep = 2 }` (experts on the 3-D `(ep_dp, ep, tp)` mesh).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from l3m.config import MeshConfig, TrainConfig
from l3m.dist.mesh import build_mesh, init_distributed
from l3m.model.blocks.moe import MoE
from l3m.train.optim import clean_name

TOL = 1e-5


class Holder(nn.Module):
    """A MoE as a child, so that the tensor-parallel plan (collected from children) reaches it."""

    def __init__(self, moe: MoE) -> None:
        super().__init__()
        self.moe = moe


def reference_moe(capacity_factor: float | None, top_k: int) -> MoE:
    torch.manual_seed(0)
    moe = MoE(8, 16, num_experts=4, top_k=top_k, capacity_factor=capacity_factor, act="gelu")
    with torch.no_grad():  # a router that prefers expert 0: uneven splits, and drops under a capacity
        moe.router.weight[0] += 0.5
    return moe


def run_moe(moe: MoE, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    moe.zero_grad()
    x = x.clone().requires_grad_(True)
    out, aux = moe(x)
    ((out * g).sum() + aux).backward()
    grads = {n: p.grad for n, p in moe.named_parameters()}
    return grads | {"x": x.grad, "out": out.detach(), "aux": aux.detach()}


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def check_moe_split(mesh: MeshConfig, world: int, rank: int) -> float:
    """The split MoE against one process on this rank's tokens (data-parallel ranks hold different tokens;
    their expert gradients are averaged, as data parallelism does). The worst difference."""
    from l3m.dist.ep import apply_ep
    from l3m.dist.tp import apply_tp

    worst = 0.0
    for cf, k in ((None, 2), (1.0, 2), (0.5, 1)):
        ref = reference_moe(cf, k)
        dims = build_mesh(mesh)
        dp = world // dims.tp
        xs, gs = torch.randn(dp, 2, 5, 8), torch.randn(dp, 2, 5, 8)  # every rank draws every rank's tokens
        per_rank = [run_moe(ref, xs[r], gs[r]) for r in range(dp)]
        mine = per_rank[dims.dp_rank]
        holder = Holder(copy.deepcopy(ref))
        apply_tp(holder, dims.submesh("tp"))
        if dims.ep > 1:
            apply_ep(holder, dims)
        moe = holder.moe
        assert moe.tp is not None and isinstance(moe.w1, DTensor)
        got = run_moe(moe, xs[dims.dp_rank], gs[dims.dp_rank])
        torch.testing.assert_close(got["aux"], mine["aux"], rtol=0, atol=0)  # the balance loss: exactly
        for key in ("out", "x", "router.weight"):
            torch.testing.assert_close(got[key], mine[key], rtol=0, atol=TOL, msg=key)
            worst = max(worst, float((got[key] - mine[key]).abs().max()))
        for n in ("w1", "w3", "w2"):  # every rank's slice gathered: the data-parallel mean of the whole
            mean = sum(r[n] for r in per_rank) / dp
            whole = full(got[n])
            torch.testing.assert_close(whole, mean, rtol=0, atol=TOL, msg=n)
            worst = max(worst, float((whole - mean).abs().max()))
    return worst


PROGRAM = """l3m 1
data { train: Synthetic(kind = "tokens", vocab = 64, seq_len = 8, batch_size = 8) -> tokens, targets }
model moe_lm {
  preprocessor { embed: TokenEmbedding(vocab = 64, dim = 16)  tokens -> x }
  trunk {
    blocks: Transformer(dim = 16, depth = 2, heads = 2, mlp = swiglu, hidden = 32, causal = true, moe_every = 1,
                        num_experts = 4, top_k = 2, capacity_factor = 1.0, moe_act = gelu)  x -> x, aux
    pair:   Transformer(dim = 16, depth = 1, heads = 2, mlp = swiglu, hidden = 32, causal = true, moe_every = 1,
                        num_experts = 2, top_k = 1)  x -> x, aux_pair
  }
  head { lm: LMHead(dim = 16, vocab = 64)  x -> logits }
}
"""
STEPS = 3


def build(path: Path) -> nn.Module:
    import l3m

    torch.manual_seed(0)
    return l3m.load(str(path)).build_model(device="meta")


def losses(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model({"tokens": tokens[:, :-1]})
    ce = nn.functional.cross_entropy(out["logits"].flatten(0, 1), tokens[:, 1:].flatten())
    aux = out["aux"] + out["aux_pair"]
    return ce + aux, aux


def expert_bytes(model: nn.Module) -> int:
    """The bytes of expert weights this rank stores."""
    return sum(p.to_local().numel() * p.element_size() for n, p in model.named_parameters()
               if n.rsplit(".", 1)[-1] in ("w1", "w3", "w2") and ".mlp." in n and isinstance(p, DTensor))


def check_expert_fsdp(mesh: MeshConfig, world: int, rank: int) -> None:
    """`mesh` (with ep = 2 and ep_dp = 2: experts FSDP-sharded) trains as one process on the data-parallel
    ranks' batches as micro-batches."""
    from l3m.dist import parallelize
    from l3m.dist.ac import apply_ac
    from l3m.model.build import materialize

    with tempfile.TemporaryDirectory() as d:  # every rank writes its own copy of the program
        path = Path(d) / "moe_lm.l3m"
        path.write_text(PROGRAM)
        # the MoE inside a checkpoint wrapper; the reference wrapped alike, as wrapping changes the init order
        train = TrainConfig(dtype="fp32", activation_checkpointing="mlp")
        ref = build(path)
        apply_ac(ref, train.activation_checkpointing)
        ref = materialize(ref, "cpu")
        model = materialize(parallelize(build(path), mesh, train), "cpu")
        dims = model.parallel_dims
        assert dims.size("ep_dp") == 2
    dp = dims.dp_size
    tokens = torch.randint(0, 64, (STEPS, dp, 2, 9), generator=torch.Generator().manual_seed(1))
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=3e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    worst_loss = worst_aux = 0.0
    for step in range(STEPS):
        opt_ref.zero_grad()
        ref_loss = ref_aux = 0.0
        for r in range(dp):  # one process, the data-parallel ranks' batches as micro-batches
            loss, aux = losses(ref, tokens[step, r])
            (loss / dp).backward()
            ref_loss, ref_aux = ref_loss + loss.item() / dp, ref_aux + aux.item() / dp
        opt_ref.step()
        opt.zero_grad()
        loss, aux = losses(model, tokens[step, dims.dp_rank])
        loss.backward()
        opt.step()
        mean = torch.stack([loss.detach(), aux.detach()])
        dist.all_reduce(mean)
        mean /= world
        worst_loss = max(worst_loss, abs(float(mean[0]) - ref_loss))
        worst_aux = max(worst_aux, abs(float(mean[1]) - ref_aux))
        assert worst_loss < TOL and worst_aux < TOL, (step, worst_loss, worst_aux)
    want = dict(ref.named_parameters())
    worst_w = 0.0
    for n, p in model.named_parameters():  # gathered whole (FSDP x ep shards: two all-gathers, a warning)
        diff = float((full(p.detach()) - want[n].detach()).abs().max())
        assert diff < TOL, (n, diff)
        worst_w = max(worst_w, diff)
    # over (ep_dp, ep): 2 experts per ep rank split by expert (FSDP's strided kind), 1 by hidden unit
    dims_split = {clean_name(n).split(".")[-5]: [p.dim for p in w.placements]
                  for n, w in model.named_parameters() if clean_name(n).endswith("0.mlp.w1")}
    assert {k: v[:2] for k, v in dims_split.items()} == {"blocks": [0, 0], "pair": [1, 0]}, dims_split
    sharded = expert_bytes(model)
    whole = sum(p.numel() * p.element_size() for n, p in ref.named_parameters()
                if n.rsplit(".", 1)[-1] in ("w1", "w3", "w2") and ".mlp." in n)
    assert sharded * dims.ep * dims.size("ep_dp") * dims.tp == whole, (sharded, whole)
    if rank == 0:
        print(f"expert FSDP: loss diff {worst_loss:.1e}, balance-loss diff {worst_aux:.1e}, weight diff {worst_w:.1e}; "
              f"expert bytes per rank {sharded} (without expert FSDP: {whole // (dims.ep * dims.tp)}, "
              f"one process: {whole})")


def main() -> None:
    mode = sys.argv[1]
    init_distributed("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "tp":
        worst = check_moe_split(MeshConfig(tp=world), world, rank)
    elif mode == "ep_fsdp":
        worst = check_moe_split(MeshConfig(dp_shard=world // 2, tp=2, ep=2), world, rank)
        if rank == 0:
            print(f"ep x tp MoE: max difference {worst:.1e}")
        check_expert_fsdp(MeshConfig(dp_shard=world, ep=2), world, rank)
    elif mode == "ep_fsdp_tp":  # 8 processes: FSDP x ep x tp, the experts on a 3-D mesh
        worst = 0.0
        check_expert_fsdp(MeshConfig(dp_shard=world // 2, tp=2, ep=2), world, rank)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if rank == 0:
        print(f"MoE split max difference {worst:.1e}")
    dist.barrier()
    if rank == 0:
        print(f"OK {mode}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

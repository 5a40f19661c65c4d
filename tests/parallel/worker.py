"""A worker for the distributed tests, run as `torchrun --nproc_per_node=2 worker.py MODE` (gloo, CPU).

Modes:
- `collectives`: the LM loss normalises by the tokens of all ranks (uneven padding included), and
  context parallelism's all-gather of keys/values has the right forward and backward;
- `fail`: rank 1 raises while rank 0 waits in a collective (the run must end, non-zero);
- `roundtrip PROGRAM SOURCE_CKPT OUT_DIR OVERRIDES...`: build the program's session on this mesh,
  restore the checkpoint (saved on another mesh) and save it again at once, for the test to compare.

Prints `OK <mode>` when every check passed.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def check_epoch_is_read_once(rank: int, world: int) -> None:
    """On real ranks: one epoch (2 workers per rank, 2 micro-batches per step) reads every sample of
    the complete global batches exactly once over the ranks, and the ranks read disjoint parts."""
    from l3m.data import build_loader
    from l3m.data.sources import Source

    class Numbered(Source):
        outputs = ("idx",)

        def __len__(self) -> int:
            return 50

        def __getitem__(self, i: int) -> dict:
            return {"idx": torch.tensor(i)}

        def spec(self) -> dict:
            return {"idx": ((), torch.long)}

    loader = build_loader(Numbered(8), [], None, rank=rank, world_size=world, seed=5, num_workers=2, grad_accum=2)
    mine = torch.cat([next(loader)["idx"] for _ in range(len(loader))])
    loader.close()
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    flat = torch.cat(every).tolist()
    assert len(flat) == len(set(flat)) == 48, sorted(flat)  # 6 global batches of 8; none twice, none skipped
    assert not set(every[0].tolist()) & set(every[1].tolist())


def check_token_normalisation(rank: int, world: int) -> None:
    from l3m.model.losses import LMCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(world * 2, 5, 11, generator=g)  # every rank draws the whole batch, keeps its rows
    targets = torch.randint(0, 11, (world * 2, 5), generator=g)
    targets[0, :4] = -100  # rank 0 has 4 ignored targets, rank 1 none: a mean of means would be wrong
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    full = logits.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(full.flatten(0, 1), targets.flatten(), ignore_index=-100).backward()

    mine = logits[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
    loss_fn = LMCrossEntropy()
    loss_fn.group = dist.group.WORLD
    loss = loss_fn(mine, targets[rank * 2 : rank * 2 + 2])
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    mean /= world
    assert torch.allclose(mean, reference, rtol=1e-6), (float(mean), float(reference))
    # Data-parallel training averages the ranks' gradients: that must be the whole batch's gradient.
    assert torch.allclose(mine.grad / world, full.grad[rank * 2 : rank * 2 + 2], atol=1e-7)
    # Evaluation takes each rank's own mean (no collective: ranks may skip an all-padding batch).
    loss_fn.eval()
    own = torch.nn.functional.cross_entropy(mine.detach().flatten(0, 1), targets[rank * 2 : rank * 2 + 2].flatten(),
                                            ignore_index=-100)
    assert torch.allclose(loss_fn(mine.detach(), targets[rank * 2 : rank * 2 + 2]), own)


def check_cp_gather(rank: int, world: int) -> None:
    from l3m.config import MeshConfig
    from l3m.dist import ContextParallel, build_mesh

    dims = build_mesh(MeshConfig(dp_shard=1, cp=world))
    cp = ContextParallel(dims.submesh("cp").get_group(), dims.cp_rank, world)
    assert cp.rank == rank
    g = torch.Generator().manual_seed(1)
    x_full = torch.randn(2, 4 * world, 3, generator=g)
    weights = [torch.randn(2, 4 * world, 3, generator=g) for _ in range(world)]
    x = x_full[:, rank * 4 : rank * 4 + 4].clone().requires_grad_(True)
    gathered = cp.gather(x, dim=1)
    assert torch.equal(gathered, x_full)
    (gathered * weights[rank]).sum().backward()
    # Every rank used the whole sequence: this rank's slice gets the sum of what each rank's use sent back.
    expected = sum(w[:, rank * 4 : rank * 4 + 4] for w in weights)
    assert torch.allclose(x.grad, expected, atol=1e-6)
    ids = torch.arange(4).repeat(2, 1) + 4 * rank
    assert torch.equal(cp.gather_ids(ids), torch.arange(4 * world).repeat(2, 1))


def roundtrip(program: str, source: str, out: str, overrides: list[str]) -> None:
    from pathlib import Path

    from l3m.dsl import compile_file
    from l3m.train.checkpoint import CheckpointManager, Found
    from l3m.train.engine import Trainer
    from l3m.train.logging import RunLogger
    from l3m.train.session import build_session, init_runtime

    rt = init_runtime()
    compiled = compile_file(program, overrides, world_size=rt.world_size)
    assert compiled.ok, [d.message for d in compiled.errors]
    session = build_session(compiled, rt)
    ckpt = CheckpointManager(Path(out) / "ckpt", keep=0, rank=rt.rank)
    trainer = Trainer(session, Path(out), RunLogger.null(), ckpt)
    step = trainer.restore(Found(int(Path(source).name.split("_")[1]), Path(source)))
    ckpt.save(step, *trainer.state())


def seeds(program: str, overrides: list[str]) -> None:
    """Print whether the two ranks draw the same random numbers once the session is built."""
    from l3m.dsl import compile_file
    from l3m.train.session import build_session, init_runtime

    rt = init_runtime()
    compiled = compile_file(program, overrides, world_size=rt.world_size)
    assert compiled.ok, [d.message for d in compiled.errors]
    session = build_session(compiled, rt)
    draw = torch.rand(4)
    both = [torch.zeros(4), torch.zeros(4)]
    dist.all_gather(both, draw)
    if rt.rank == 0:
        print("SAME" if torch.equal(both[0], both[1]) else "DIFFERENT", flush=True)
    session.close()


def main() -> int:
    from l3m.dist import init_distributed

    mode = sys.argv[1]
    init_distributed("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        if mode == "collectives":
            check_token_normalisation(rank, world)
            check_epoch_is_read_once(rank, world)
            check_cp_gather(rank, world)
        elif mode == "seeds":
            seeds(sys.argv[2], sys.argv[3:])
        elif mode == "roundtrip":
            roundtrip(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
        elif mode == "fail":
            if rank == 1:
                raise RuntimeError("rank 1 fails on purpose")
            t = torch.ones(1)
            dist.all_reduce(t)  # never completes: the peer is gone
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        dist.barrier()
    finally:
        if mode != "fail":
            dist.destroy_process_group()
    if rank == 0:
        print(f"OK {mode}", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # The work is checked above; leave without the interpreter's teardown, where gloo's threads were
    # once seen to abort ("terminate called without an active exception") on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

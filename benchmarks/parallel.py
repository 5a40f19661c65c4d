"""Parallel overhead: FSDP2 over 2 gloo ranks (torchrun, one thread each) against one process on
the same global batch, with one thread and with two (the same two cores).

Each run builds the example as `l3m train` does (`init_runtime`, `build_session`, which hands the
model to `l3m.dist.parallelize`: `fully_shard` of each layer, block and the root over the
`dp_shard` mesh); with 2 ranks each loads half the batch. The runs go single, FSDP, single, and
the FSDP step is compared with the mean of the single-process runs around it. The first step's
loss of each run is kept: on the same global batch from the same initial weights they agree.

    python benchmarks/parallel.py            # writes benchmarks/results/parallel.json
    python benchmarks/parallel.py --quick    # a smoke run (tiny GPT, a few steps)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

MID = ["dim=256", "model.depth=4", "model.heads=4"]
CONFIGS = [("llm_bytes", "tiny", []), ("llm_bytes", "mid", MID), ("vit_digits", "tiny", [])]


def worker(example: str, overrides: list[str], threads: list[int], rounds: int, steps: int) -> dict[str, Any]:
    """One run: this process, or one rank of a torchrun world (rank 0 reports)."""
    import torch
    import torch.distributed as dist

    from l3m.train.session import build_session, init_runtime, shutdown_runtime

    rt = init_runtime()
    try:
        base = common.load(example, overrides)
        source = next(n for n in base.program.of_role("source") if n.name == "train")
        global_batch = int(source.call.kwargs["batch_size"])  # the file's: the global batch
        local = global_batch // rt.world_size
        s = build_session(common.load(example, [*overrides, f"data.train.batch_size={local}"]), rt)
        tr = common.trainer(s)
        torch.set_num_threads(threads[0])
        first = tr.train_step().logs["loss"].detach().clone()
        if rt.distributed:
            dist.all_reduce(first)
            first /= rt.world_size
        per_threads: dict[str, dict[str, Any]] = {}
        for n in threads:
            torch.set_num_threads(n)
            walls, cpus = [], []
            for _ in range(2):
                tr.train_step()
            for _ in range(rounds):
                if rt.distributed:
                    dist.barrier()
                wall, cpu = common.time_steps(tr.train_step, steps)
                walls.append(wall)
                cpus.append(cpu)
            per_threads[str(n)] = {"step_s": common.summary(walls), "cpu_step_s": common.summary(cpus)}
        s.close()
        return {"world_size": rt.world_size, "global_batch": global_batch, "local_batch": local,
                "first_loss": float(first), "fsdp": type(s.model).__name__, "threads": per_threads}
    finally:
        shutdown_runtime(rt)


def launch(example: str, overrides: list[str], ranks: int, args) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        threads = "1" if ranks > 1 else "1,2"
        script = [__file__, "--worker", example, out.name, "--worker-threads", threads,
                  "--rounds", str(args.rounds), "--steps", str(args.steps), "--", *overrides]
        if ranks > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
        else:
            cmd = [sys.executable, *script]
        env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL if not args.verbose else None)
        row = json.loads(Path(out.name).read_text())
        row["process_s"] = time.perf_counter() - t0
        return row


def config(example: str, size: str, overrides: list[str], args) -> dict[str, Any]:
    single_a = launch(example, overrides, 1, args)
    fsdp = launch(example, overrides, 2, args)
    single_b = single_a if args.quick else launch(example, overrides, 1, args)

    def mean(key: str, threads: str) -> float:
        return (single_a["threads"][threads][key]["median"] + single_b["threads"][threads][key]["median"]) / 2

    t1, t2 = mean("step_s", "1"), mean("step_s", "2")
    tf = fsdp["threads"]["1"]["step_s"]["median"]
    row = {"example": example, "size": size, "overrides": overrides, "single": [single_a, single_b], "fsdp": fsdp,
           "step_s": {"1 process, 1 thread": t1, "1 process, 2 threads": t2, "2 ranks FSDP, 1 thread each": tf},
           "speedup_vs_1_thread": t1 / tf, "speedup_vs_2_threads": t2 / tf,
           "overhead_vs_ideal": tf / (t1 / 2) - 1.0,
           "first_loss": {"single": single_a["first_loss"], "fsdp": fsdp["first_loss"]}}
    print(f"{example:>10} {size:<4}: 1p1t {t1 * 1e3:7.1f} ms, 1p2t {t2 * 1e3:7.1f} ms, FSDP 2x1t {tf * 1e3:7.1f} ms "
          f"(overhead over a perfect 2x split: {row['overhead_vs_ideal']:+.0%}); first loss "
          f"{single_a['first_loss']:.5f} vs {fsdp['first_loss']:.5f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("EXAMPLE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", default="1", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        example, out = args.worker
        threads = [int(t) for t in args.worker_threads.split(",")]
        row = worker(example, args.overrides, threads, args.rounds, args.steps)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(out).write_text(json.dumps(row))
        return
    started = common.machine()
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.quick:
        args.rounds, args.steps = 2, 1
    rows = [config(ex, size, ov, args) for ex, size, ov in configs]
    common.write(common.out_path(args, "parallel"), {"configs": rows}, started)


if __name__ == "__main__":
    main()

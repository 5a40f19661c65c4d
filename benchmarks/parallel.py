"""Parallel overhead: FSDP2 over 2 gloo ranks (torchrun, one thread each) against one process on
the same global batch, with one thread and with two (the same two cores); and FSDP again with
`train.reshard_after_forward = false` (parameters stay gathered from forward to backward).

Each run builds the example as `l3m train` does (`init_runtime`, `build_session`, which hands the
model to `l3m.dist.parallelize`: `fully_shard` of each layer, block and the root over the
`dp_shard` mesh); with 2 ranks each loads half the batch. The runs go single, FSDP, FSDP without
resharding, single, and the FSDP steps are compared with the mean of the single-process runs
around them; one profiled stretch splits the FSDP step's time over FSDP2's hooks. The first step's
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

MID = ["dim=256", "gpt.depth=4", "gpt.heads=4"]  # llm_bytes: overrides start with its model's name
CONFIGS = [("llm_bytes", "tiny", []), ("llm_bytes", "mid", MID)]
# FSDP2's own profiler labels around its hooks (each also names its module); they do not nest
# in one another, so their sum is the step's time in FSDP: all-gathers, reduce-scatters, copies.
FSDP_HOOKS = ("FSDP::root_pre_forward", "FSDP::pre_forward", "FSDP::post_forward", "FSDP::pre_backward",
              "FSDP::post_backward_accumulate", "FSDP::post_backward_reshard", "FSDP::post_backward_reduce",
              "FSDP::root_post_backward_callback")


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
        local = global_batch // rt.world_size  # what each rank loads (l3m splits the global batch)
        s = build_session(base, rt)
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
        hooks = fsdp_hook_times(tr, steps) if rt.distributed else {}
        s.close()
        return {"world_size": rt.world_size, "global_batch": global_batch, "local_batch": local,
                "first_loss": float(first), "model_class": type(s.model).__name__, "threads": per_threads,
                "fsdp_hooks_s_per_step": hooks}
    finally:
        shutdown_runtime(rt)


def fsdp_hook_times(tr, steps: int) -> dict[str, float]:
    """Seconds per step inside each FSDP2 hook (and their total), from one profiled stretch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            tr.train_step()
    out = dict.fromkeys(FSDP_HOOKS, 0.0)
    for e in prof.key_averages():
        label = e.key.split(" (")[0]
        if label in out:
            out[label] += e.cpu_time_total / 1e6 / steps
    out["total"] = sum(out.values())
    return out


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
        quiet = subprocess.PIPE if not args.verbose else None  # the ranks' profiler chatter, unless asked
        proc = subprocess.run(cmd, env=env, stdout=quiet, stderr=quiet, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stderr or '')[-4000:]}")
        row = json.loads(Path(out.name).read_text())
        row["process_s"] = time.perf_counter() - t0
        return row


def config(example: str, size: str, overrides: list[str], args) -> dict[str, Any]:
    keep = [*overrides, "train.reshard_after_forward=false"]
    single_a = launch(example, overrides, 1, args)
    fsdp = launch(example, overrides, 2, args)
    fsdp_keep = fsdp if args.quick else launch(example, keep, 2, args)
    single_b = single_a if args.quick else launch(example, overrides, 1, args)

    def mean(threads: str) -> float:
        return (single_a["threads"][threads]["step_s"]["median"] + single_b["threads"][threads]["step_s"]["median"]) / 2

    t1, t2 = mean("1"), mean("2")
    tf, tk = (r["threads"]["1"]["step_s"]["median"] for r in (fsdp, fsdp_keep))
    row = {"example": example, "size": size, "overrides": overrides,
           "runs": {"single": [single_a, single_b], "fsdp": fsdp, "fsdp_keep_params": fsdp_keep},
           "step_s": {"single_1_thread": t1, "single_2_threads": t2, "fsdp": tf, "fsdp_keep_params": tk},
           "speedup_vs_1_thread": t1 / tf, "speedup_vs_2_threads": t2 / tf, "overhead_vs_ideal": tf / (t1 / 2) - 1.0,
           "keep_params_overhead_vs_ideal": tk / (t1 / 2) - 1.0,
           "first_loss": {"single": single_a["first_loss"], "fsdp": fsdp["first_loss"]}}
    hooks = fsdp["fsdp_hooks_s_per_step"].get("total", 0.0)
    print(f"{example:>10} {size:<4}: 1p1t {t1 * 1e3:7.1f} ms, 1p2t {t2 * 1e3:7.1f} ms, FSDP 2x1t {tf * 1e3:7.1f} ms "
          f"(over a perfect 2x split: {row['overhead_vs_ideal']:+.0%}; {hooks * 1e3:.1f} ms/step in FSDP hooks), "
          f"without resharding {tk * 1e3:7.1f} ms; first loss {single_a['first_loss']:.5f} vs "
          f"{fsdp['first_loss']:.5f}", flush=True)
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
    common.set_threads(args.threads)  # what the machine record says; the runs set their own
    started = common.machine()
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.quick:
        args.rounds, args.steps = 2, 1
    rows = [config(ex, size, ov, args) for ex, size, ov in configs]
    common.write(common.out_path(args, "parallel"), {"configs": rows}, started)


if __name__ == "__main__":
    main()

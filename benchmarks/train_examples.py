"""Train every example to its declared steps, as a user would, and record what happened.

Each example runs as `python -m l3m train examples/<name>.l3m --output <tmp> --no-resume` in its
own process with the file's own settings (logging, evaluation, checkpoints included; one torch
thread, `OMP_NUM_THREADS=1`, unless `--threads` says otherwise: two threads on two cores that
other processes share stall on each other):
the wall time of the whole command, the first and last logged training loss, and the final
evaluation on held-out data (the ViT's top-1 accuracy, the GPT's loss and perplexity). The
examples promise to train in under 3 minutes on a small CPU with the loss falling.

    python benchmarks/train_examples.py            # writes benchmarks/results/train_examples.json
    python benchmarks/train_examples.py --quick    # a smoke run (the ViT, 5 steps)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

LIMIT_S = 180.0


def train(example: str, overrides: list[str], threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ)
        if env.get("WANDB_MODE") == "disabled" and "WANDB_MODE" not in common.USER_ENV:
            env.pop("WANDB_MODE")  # the file's `log { wandb = ... }` decides, as for a user
        if threads > 0:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "l3m", "train", common.example_path(example), "--output", out, "--no-resume",
               *overrides]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=common.ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines() if (Path(out) / "metrics.jsonl").exists() else []
    records = [json.loads(ln) for ln in lines if ln.strip()]
    trains = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") not in ("train", None)]
    row: dict[str, Any] = {"example": example, "exit_code": proc.returncode, "wall_s": wall,
                           "under_limit": wall < LIMIT_S and proc.returncode == 0}
    if proc.returncode != 0:
        row["stderr_tail"] = proc.stderr[-2000:]
    if trains:
        first, last = trains[0], trains[-1]
        row.update(steps=last["step"], first={"step": first["step"], "loss": first["loss"]},
                   last={"step": last["step"], "loss": last["loss"]}, loss_fell=last["loss"] < first["loss"],
                   samples_per_s=last.get("samples_per_s"), step_time_s=last.get("step_time_s"))
    if evals:
        final = evals[-1]
        row["eval"] = {k: v for k, v in final.items() if k not in ("time", "split")}
        row["eval_split"] = final["split"]
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.set_defaults(threads=1)  # 0: torch's default (every core)
    ap.add_argument("--examples", default=",".join(common.EXAMPLES))
    args = ap.parse_args(argv)
    started = common.machine()
    started["threads"] = args.threads or "torch default"
    examples = args.examples.split(",")
    overrides: list[str] = []
    if args.quick:
        examples = ["vit_digits"]  # it has held-out data: the whole report path runs
        overrides = ["train.steps=5", "train.log_every=1", "train.eval_every=0", "train.eval_steps=2",
                     "log.wandb=disabled"]
    rows = []
    for ex in examples:
        row = train(ex, overrides, args.threads)
        rows.append(row)
        if "first" in row:
            print(f"{ex:>17}: {row['wall_s']:6.1f} s, loss {row['first']['loss']:.3f} (step {row['first']['step']}) "
                  f"-> {row['last']['loss']:.3f} (step {row['last']['step']}), eval {row.get('eval', {})}",
                  flush=True)
        else:
            print(f"{ex:>17}: failed with exit code {row['exit_code']}\n{row.get('stderr_tail', '')}", flush=True)
    common.write(common.out_path(args, "train_examples"), {"limit_s": LIMIT_S, "runs": rows}, started)


if __name__ == "__main__":
    main()

"""Data loading: does the loader keep the training step fed?

For every example, training steps run as `l3m train` runs them (`Trainer.train_step`), with the
loader's `next()` timed from inside the step: the time the step waits for its batch. With
`train.num_workers = 0` (what the examples declare) the batch is made in the training process,
so the wait is the whole cost of loading; with workers it is made ahead in other processes and
the wait is what they failed to hide. Alongside, the loader alone (no training) gives the data
pipeline's own batches per second: its headroom over the step rate.

    python benchmarks/dataloading.py            # writes benchmarks/results/dataloading.json
    python benchmarks/dataloading.py --quick    # a smoke run (one example, a few steps)
"""

from __future__ import annotations

import time
from typing import Any

import common

WORKERS = (0, 2)


class TimedLoader:
    """Wraps a loader; records how long each `next()` took (the step's wait for data)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.waits = loader, []

    def __iter__(self) -> TimedLoader:
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        batch = next(self.loader)
        self.waits.append(time.perf_counter() - t0)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def run(example: str, workers: int, steps: int, warmup: int) -> dict[str, Any]:
    s = common.session(common.load(example, [f"train.num_workers={workers}"]))
    try:
        tr = common.trainer(s)
        timed = TimedLoader(s.train_loader)
        s.train_loader = timed
        for _ in range(warmup):  # starts the workers, fills their queues
            tr.train_step()
        timed.waits.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        total = time.perf_counter() - t0
        waits = list(timed.waits)
        # The loader alone: how fast the pipeline makes batches when nothing else runs.
        t0 = time.perf_counter()
        for _ in range(steps):
            next(timed.loader)
        alone = (time.perf_counter() - t0) / steps
    finally:
        s.close()
    step = total / steps
    return {"workers": workers, "step_s": step, "wait_s": common.summary(waits),
            "wait_fraction": sum(waits) / total, "loader_alone_batch_s": alone,
            "loader_headroom": step / alone if alone > 0 else None}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--examples", default=",".join(common.EXAMPLES))
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    started = common.machine()
    examples = args.examples.split(",")
    steps, warmup = (args.steps, 5)
    if args.quick:
        examples, steps, warmup = examples[:1], 3, 1
    rows = []
    for ex in examples:
        row: dict[str, Any] = {"example": ex, "runs": [run(ex, w, steps, warmup) for w in WORKERS]}
        rows.append(row)
        for r in row["runs"]:
            print(f"{ex:>17} workers={r['workers']}: step {r['step_s'] * 1e3:6.1f} ms, waits "
                  f"{r['wait_s']['median'] * 1e3:6.2f} ms (median) = {r['wait_fraction']:5.1%} of the time; "
                  f"loader alone {r['loader_alone_batch_s'] * 1e3:6.2f} ms/batch", flush=True)
    common.write(common.out_path(args, "dataloading"), {"steps": steps, "examples": rows}, started)


if __name__ == "__main__":
    main()

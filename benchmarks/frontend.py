"""Front-end time (parse + resolve + check + schedule, interpreter and imports excluded) against
file size, with each stage's share and the fitted growth; each size is also timed with Python's
garbage collector paused (clean stage shares, and what collection costs). Writes
benchmarks/results/frontend.json.

    python benchmarks/frontend.py            # 100 .. 10,000 blocks, 5 repeats
    python benchmarks/frontend.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from l3m import registry
from l3m.dsl.check import check
from l3m.dsl.parser import parse
from l3m.dsl.resolve import read_source, resolve
from l3m.dsl.schedule import dataflow

OUT = Path(__file__).parent / "results" / "frontend.json"


def generate(blocks: int) -> str:
    """A model with `blocks` blocks in a chain, spread over the four stages, plus data and a loss."""
    lines = ["l3m 1", "let dim = 16", "data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }",
             "model big {", "  preprocessor { embed: TokenEmbedding(vocab = 256, dim = dim) tokens -> x0 }", "  trunk {"]
    for i in range(1, blocks - 1):
        lines.append(f"    b{i}: Linear(dim, dim, bias = false) x{i - 1} -> x{i}")
    lines += ["  }", f"  head {{ lm: LMHead(dim, 256) x{blocks - 2} -> logits }}", "}",
              "loss ce: LMCrossEntropy() logits, targets -> loss"]
    return "\n".join(lines) + "\n"


def measure(path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    parse(read_source(path), path)
    t1 = time.perf_counter()
    res = resolve(path)  # parses again inside; subtract the parse time measured above
    t2 = time.perf_counter()
    check(res.program)
    t3 = time.perf_counter()
    dataflow(res.program)  # the scheduler alone (check runs it once too)
    t4 = time.perf_counter()
    parse_s, resolve_s = t1 - t0, (t2 - t1) - (t1 - t0)
    schedule_s = t4 - t3
    check_s = (t3 - t2) - schedule_s
    return {"parse": parse_s, "resolve": max(resolve_s, 0.0), "check": max(check_s, 0.0), "schedule": schedule_s,
            "total": parse_s + max(resolve_s, 0.0) + (t3 - t2)}


def measure_gc_paused(path: str) -> dict[str, float]:
    """`measure` with Python's cyclic garbage collector paused. Its collections fire after a set
    number of allocations, so they land in the same stage on every repeat and bill that stage for
    objects every stage made; paused, each stage's share is its own work (and the difference in
    total is what collection costs)."""
    gc.collect()
    gc.disable()
    try:
        return measure(path)
    finally:
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="directory for frontend.json (--quick writes only here)")
    args = ap.parse_args()
    sizes = [100, 300] if args.quick else [100, 300, 1000, 3000, 10000]
    repeats = 1 if args.quick else args.repeats
    registry.load_builtins()
    parse("l3m 1\n", "<warm-up>")  # build the parser once, outside the measurements
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = str(Path(tmp) / f"big{n}.l3m")
            Path(path).write_text(generate(n))
            runs = [measure(path) for _ in range(repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}
            paused = [measure_gc_paused(path) for _ in range(repeats)]
            med_paused = {k: statistics.median(r[k] for r in paused) for k in paused[0]}
            rows.append({"blocks": n, "lines": n + 10, "median_s": med, "min_max_s": spread,
                         "gc_paused_median_s": med_paused})
            print(f"{n:>6} blocks: {med['total']:.3f} s (parse {med['parse']:.3f}, resolve {med['resolve']:.3f}, "
                  f"check {med['check']:.3f}, schedule {med['schedule']:.3f}); {med_paused['total']:.3f} s "
                  "with the garbage collector paused")
    x = np.log([r["blocks"] for r in rows])
    y = np.log([r["median_s"]["total"] for r in rows])
    slope = float(np.polyfit(x, y, 1)[0]) if len(rows) > 1 else float("nan")
    per_block_us = rows[-1]["median_s"]["total"] / rows[-1]["blocks"] * 1e6
    print(f"fitted growth: time ~ blocks^{slope:.2f}; {per_block_us:.0f} µs per block at {rows[-1]['blocks']}")
    out = args.out / "frontend.json" if args.out is not None else None if args.quick else OUT
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "loglog_slope": slope, "us_per_block": per_block_us}, indent=2))


if __name__ == "__main__":
    main()

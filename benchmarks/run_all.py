"""Run every benchmark, then regenerate benchmarks/RESULTS.md: `python benchmarks/run_all.py`.

Each script runs in its own process (a clean torch: threads, compile caches, process groups).
A script that fails is reported and the others still run; the report renders what exists, and
the exit status is 1 if anything failed.

    python benchmarks/run_all.py                     # all of them (about 15 minutes on 2 cores)
    python benchmarks/run_all.py --only overhead,throughput
    python benchmarks/run_all.py --quick --out DIR   # smoke run; JSON and report go to DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("frontend", "lint_speed", "overhead", "throughput", "torch_compile", "parallel", "checkpointing", "dataloading",
           "train_examples", "lsp_latency", "generate_speed", "memory_plan", "peers")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes; nothing published unless --out is given")
    ap.add_argument("--out", type=Path, default=None, help="directory for the JSON and the report")
    ap.add_argument("--only", default="", help="comma-separated script names (default: all)")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SCRIPTS))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    extra = (["--quick"] if args.quick else []) + (["--out", str(args.out)] if args.out else [])
    failed, t_all = [], time.perf_counter()
    for name in only or SCRIPTS:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra]).returncode
        print(f"== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        if code:
            failed.append(name)
    if args.out is not None or not args.quick:
        results = args.out if args.out is not None else HERE / "results"
        report = (args.out / "RESULTS.md") if args.out is not None else HERE / "RESULTS.md"
        subprocess.run([sys.executable, str(HERE / "report.py"), "--results", str(results), "--out", str(report)],
                       check=False)
    print(f"all done in {time.perf_counter() - t_all:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

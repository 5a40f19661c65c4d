"""Cold `l3m lint` / `l3m graph`: a new process each time, as a user (or an editor, a pre-commit hook)
runs it. Writes benchmarks/results/lint_speed.json.

    python benchmarks/lint_speed.py            # 20 runs of each command, interleaved
    python benchmarks/lint_speed.py --quick    # a smoke run

Each run is timed in wall seconds and in CPU seconds (user + system of the child: what the
process itself cost, whatever else the shared machine did meanwhile). Python writes bytecode as
it does for a user (into a private prefix, so the checkout stays clean), and the parser tables are
cached in a private directory: the first, uncounted run builds both. `no parser cache` shows the
first run after an install or a grammar change; `python -c pass` the interpreter alone.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, USER_ENV, machine, out_path, parser, summary, write

TARGET = "models/llm.l3m"


def commands(target: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    l3m = [sys.executable, "-m", "l3m"]
    return {
        "lint": ([*l3m, "lint", target], {}),
        "graph --format dot": ([*l3m, "graph", "--format", "dot", target], {}),
        "lint, no parser cache": ([*l3m, "lint", target], {"L3M_PARSER_CACHE": "0"}),
        "python -c pass": ([sys.executable, "-c", "pass"], {}),
    }


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; a failing command stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--runs", type=int, default=None, help="timed runs of each command (default 20; --quick 3)")
    ap.add_argument("--file", default=TARGET, help=f"the program to lint (default {TARGET})")
    args = ap.parse_args(argv)
    runs = args.runs or (3 if args.quick else 20)
    started = machine()
    with tempfile.TemporaryDirectory(prefix="l3m-lint-speed-") as tmp:
        base = {k: v for k, v in USER_ENV.items() if k not in ("PYTHONDONTWRITEBYTECODE", "L3M_PARSER_CACHE")}
        base |= {"PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"), "L3M_CACHE_DIR": str(Path(tmp) / "cache"),
                 "NO_COLOR": "1"}
        variants = {name: (cmd, base | extra) for name, (cmd, extra) in commands(args.file).items()}
        for cmd, env in variants.values():  # warm-up: bytecode and parser tables written, not counted
            run_once(cmd, env)
        times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in variants}
        names = list(variants)
        for r in range(runs):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: load bursts hit all alike
                wall, cpu = run_once(*variants[name])
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    rows = [{"command": name, "argv": " ".join(os.path.relpath(a, ROOT) if a == sys.executable else a
                                               for a in variants[name][0]),
             "wall_s": summary(t["wall"]), "cpu_s": summary(t["cpu"])} for name, t in times.items()]
    for row in rows:
        print(f"{row['command']:24s} wall median {row['wall_s']['median']:.3f} s (min {row['wall_s']['min']:.3f})  "
              f"cpu median {row['cpu_s']['median']:.3f} s (min {row['cpu_s']['min']:.3f})")
    write(out_path(args, "lint_speed"), {"file": args.file, "runs": runs, "target_s": 0.3, "rows": rows}, started)


if __name__ == "__main__":
    main()

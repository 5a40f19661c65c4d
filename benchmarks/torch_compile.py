"""torch.compile per example: compile time and the speed-up of a training step, two ways.

- "layers": what `l3m train` does with `train { compile = true }` (l3m.dist compiles each repeated
  transformer layer; embeddings, heads and losses stay eager);
- "whole": the whole MetaModel as one graph, `model.compile(fullgraph=True)`, which its
  straight-line generated forward makes possible (a graph break would fail the run).

Every example is timed the "whole" way, and (to keep the suite short) the GPT and the ViT the
"layers" way too (`--layers-examples`).

Every (example, way) runs in a fresh process with an empty inductor cache, so the compile time
is a cold one: the first step's time less an eager step's. The speed-up is the eager step time
over the compiled one, the two sessions taking turns in the same process.

    python benchmarks/torch_compile.py            # writes benchmarks/results/compile.json
    python benchmarks/torch_compile.py --quick    # a smoke run: one example, "whole", dynamo only
                                                  # (backend "eager": traces, generates no code)
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

MODES = ("layers", "whole")


def worker(example: str, mode: str, backend: str, rounds: int, steps: int) -> dict[str, Any]:
    """Runs in its own process (the inductor cache directory was set before torch was imported)."""
    import torch

    def build(compiled: bool):
        overrides = ["train.compile=true"] if compiled and mode == "layers" else []
        s = common.session(common.load(example, overrides))
        if compiled and mode == "whole":
            s.model.compile(fullgraph=True, backend=backend)
        return s, common.trainer(s)

    eager_s, eager = build(False)
    comp_s, comp = build(True)
    eager_times = [common.time_steps(eager.train_step, 1)[0] for _ in range(3)]
    first = []
    for _ in range(3):
        t0 = time.perf_counter()
        comp.train_step()
        first.append(time.perf_counter() - t0)
    times = common.interleaved({"eager": eager.train_step, "compiled": comp.train_step}, rounds=rounds,
                               steps=steps, warmup=1)
    eager_s.close()
    comp_s.close()
    eager_step = min(eager_times)
    counters = torch._dynamo.utils.counters
    return {
        "example": example, "mode": mode, "backend": backend,
        "compile_s": first[0] - eager_step,
        "first_steps_s": first,
        "eager_step_s": common.summary(times["wall"]["eager"]),
        "compiled_step_s": common.summary(times["wall"]["compiled"]),
        "speedup": common.ratios(times["cpu"]["eager"], times["cpu"]["compiled"]),
        "speedup_wall": common.ratios(times["wall"]["eager"], times["wall"]["compiled"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "recompiles": int(counters["recompiles"].get("total", 0)) if "recompiles" in counters else 0,
    }


def run_worker(example: str, mode: str, args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache, tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        cmd = [sys.executable, __file__, "--worker", example, mode, out.name, "--threads", str(args.threads),
               "--backend", args.backend, "--rounds", str(args.rounds), "--steps", str(args.steps)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:  # keep going: the other examples still tell something
            print(f"{example:>17} {mode:<6}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            return {"example": example, "mode": mode, "error": proc.stderr[-3000:]}
        row = json.loads(Path(out.name).read_text())
        row["process_s"] = time.perf_counter() - t0
    print(f"{example:>17} {mode:<6}: compile {row['compile_s']:5.1f} s, speed-up "
          f"{row['speedup']['median']:.2f}x ({row['graphs']} graph(s), {row['graph_breaks']} breaks)", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--examples", default=",".join(common.EXAMPLES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--layers-examples", default="llm_bytes,vit_digits",
                    help='examples also timed the "layers" way (each run is a cold compile: ~30 s)')
    ap.add_argument("--worker", nargs=3, metavar=("EXAMPLE", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    if args.worker:
        example, mode, out = args.worker
        Path(out).write_text(json.dumps(worker(example, mode, args.backend, args.rounds, args.steps)))
        return
    started = common.machine()
    examples, modes = args.examples.split(","), args.modes.split(",")
    if args.quick:
        examples, modes, args.backend, args.rounds, args.steps = examples[:1], ["whole"], "eager", 2, 1
    layered = set(args.layers_examples.split(","))
    rows = [run_worker(ex, mode, args) for ex in examples for mode in modes if mode != "layers" or ex in layered]
    common.write(common.out_path(args, "compile"), {"backend": args.backend, "runs": rows}, started)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

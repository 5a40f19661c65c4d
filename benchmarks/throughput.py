"""Throughput and MFU of every example on this CPU, in fp32 and in bf16 (autocast).

Each example is built as `l3m train` builds it (`build_session`) and timed on the trainer's own
`train_step()` (loading the batch, forward, loss, backward, clipping, AdamW, schedule). Samples
and tokens per step are counted by `l3m.train.perf`; MFU is the step's FLOPs (`l3m.plan`,
counted on the meta device) per second over the matmul peak of the same dtype, measured in
this run (the best of several timings spread over the run). The fp32 and bf16 sessions of an
example take turns in rounds.

    python benchmarks/throughput.py            # writes benchmarks/results/throughput.json
    python benchmarks/throughput.py --quick    # a smoke run (one example, a few steps)
"""

from __future__ import annotations

from typing import Any

import common

DTYPES = ("fp32", "bf16")


# name -> (example, overrides): the examples at their own sizes, and the LLM at the mid size
# (dim 256, depth 4), where matmuls are large enough for MFU to mean something on a CPU
CASES = {**{ex: (ex, []) for ex in common.EXAMPLES}, "llm_bytes@mid": ("llm_bytes", common.mid("gpt"))}


def measure(name: str, args, peaks: dict[str, list[float]]) -> dict[str, Any]:
    from l3m.train import perf

    example, overrides = CASES[name]
    compiled = {dt: common.load(example, [*overrides, f"train.dtype={dt}"]) for dt in DTYPES}
    flops = common.flops_per_sample(compiled["fp32"])
    sessions = {dt: common.session(c) for dt, c in compiled.items()}
    trainers = {dt: common.trainer(s) for dt, s in sessions.items()}
    probe = next(sessions["fp32"].train_loader)  # what one batch holds
    keys = sessions["fp32"].input_keys
    samples, tokens = perf.batch_size(probe, keys), perf.count_tokens(probe, keys)
    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    times = common.interleaved({dt: t.train_step for dt, t in trainers.items()}, rounds=rounds, steps=steps,
                               warmup=2)
    for s in sessions.values():
        s.close()
    for dt in DTYPES:
        peaks[dt].append(common.matmul_peak(dt))
    row: dict[str, Any] = {"example": name, "samples_per_step": samples, "tokens_per_step": tokens,
                           "flops_per_sample": flops}
    for dt in DTYPES:
        wall = common.summary(times["wall"][dt])
        sec = wall["median"]
        row[dt] = {"step_s": wall, "cpu_step_s": common.summary(times["cpu"][dt]),
                   "samples_per_s": samples / sec, "tokens_per_s": tokens / sec if tokens else None,
                   "achieved_flops": flops * samples / sec if flops else None}
    print(f"{name:>17}: fp32 {row['fp32']['samples_per_s']:8.0f} samples/s, "
          f"bf16 {row['bf16']['samples_per_s']:8.0f} samples/s", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="steps per round")
    ap.add_argument("--examples", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    started = common.machine()
    from l3m.train import perf

    examples = args.examples.split(",")[:1] if args.quick else args.examples.split(",")
    peaks: dict[str, list[float]] = {dt: [common.matmul_peak(dt)] for dt in DTYPES}
    rows = [measure(ex, args, peaks) for ex in examples]
    peak = {dt: max(v) for dt, v in peaks.items()}
    for row in rows:
        for dt in DTYPES:
            f = row[dt]["achieved_flops"]
            row[dt]["mfu"] = f / peak[dt] if f else None
            print(f"{row['example']:>17} {dt}: MFU {row[dt]['mfu'] or 0:.1%}")
    common.write(common.out_path(args, "throughput"), {
        "peak_flops": peak, "peak_flops_samples": peaks,
        "trainer_peak_fp32": perf.measured_peak_flops("cpu", __import__("torch").float32),
        "examples": rows}, started)


if __name__ == "__main__":
    main()

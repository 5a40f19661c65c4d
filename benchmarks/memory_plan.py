"""Memory plan: the per-rank peak `l3m plan` predicts (a training step simulated on the meta
device) against the peak of a real training step of every example on the CPU.

The measurement is independent of the prediction: torch's profiler (`profile_memory=True`)
records every allocation and free of the CPU allocator during one `Trainer.train_step()` (the
second one, so optimizer state exists, as in every step after the first); the peak is the
bytes alive when the step starts (parameters, buffers, optimizer state: every storage counted
once) plus the highest running sum of the allocator's events during the step.

    python benchmarks/memory_plan.py            # writes benchmarks/results/memory_plan.json
    python benchmarks/memory_plan.py --quick    # a smoke run (llm_bytes only)
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import common

MiB = 2**20
EXTRA = [("llm_bytes", ["train.activation_checkpointing=full"]), ("llm_bytes", ["train.dtype=bf16"]),
         ("vit_digits", ["train.activation_checkpointing=selective"])]


def live_bytes(*objects: Any) -> int:
    """Bytes of the distinct storages held by modules (parameters, buffers) and optimizers (state)."""
    import torch

    seen: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in [*obj.parameters(), *obj.buffers()]:
                add(t)
                add(t.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    add(v)
    return sum(seen.values())


def measured_peak(trainer, s) -> int:
    """Peak bytes of one training step on the CPU allocator (see the module doc)."""
    from torch.profiler import ProfilerActivity, profile

    trainer.train_step()  # optimizer state now exists
    start = live_bytes(s.model, s.criterion, s.optimizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = top = 0
    for _, delta in events:
        running += delta
        top = max(top, running)
    return start + top


def predicted(compiled) -> dict[str, Any]:
    from l3m.plan import plan

    p = plan(compiled.program, 1, schedule=compiled.flow.model_order())
    if p.get("peak_memory") is None:
        raise RuntimeError(f"no prediction: {p['notes']}")
    return p["peak_memory"]


def case(example: str, overrides: list[str]) -> dict[str, Any]:
    compiled = common.load(example, overrides)
    pred = predicted(compiled)
    s = common.session(compiled)
    try:
        measured = measured_peak(common.trainer(s), s)
    finally:
        s.close()
    error = (pred["peak"] - measured) / measured
    row = {"example": example, "overrides": overrides, "predicted_mib": pred["peak"] / MiB,
           "measured_mib": measured / MiB, "error": error,
           "breakdown_mib": {k: v / MiB for k, v in pred["breakdown"].items()}, "shape": pred["shape"]}
    print(f"{example:>18} {' '.join(overrides):<40} predicted {row['predicted_mib']:8.2f} MiB  measured "
          f"{row['measured_mib']:8.2f} MiB  error {error * 100:+6.1f}%", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    started = common.machine()
    names = sorted(Path(p).stem for p in glob.glob(str(common.ROOT / "examples" / "*.l3m")))
    cases = [("llm_bytes", [])] if args.quick else [(n, []) for n in names] + EXTRA
    rows = []
    for example, overrides in cases:
        try:
            rows.append(case(example, overrides))
        except Exception as e:  # noqa: BLE001 - an example that cannot run here is recorded, the rest still run
            print(f"{example}: {type(e).__name__}: {e}", flush=True)
            rows.append({"example": example, "overrides": overrides, "error_text": f"{type(e).__name__}: {e}"})
    errors = [abs(r["error"]) for r in rows if "error" in r]
    summary = {"max_abs_error": max(errors) if errors else None,
               "mean_abs_error": sum(errors) / len(errors) if errors else None, "goal": 0.10}
    common.write(common.out_path(args, "memory_plan"), {"rows": rows, "summary": summary}, started)


if __name__ == "__main__":
    main()

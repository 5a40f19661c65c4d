"""Activation checkpointing: peak memory and step time with `train.activation_checkpointing` =
none, selective (keep matmul and attention outputs, recompute the rest) and full.

The three sessions are built as `l3m train` builds them (`l3m.dist` wraps each transformer
layer). Peak memory is measured on the CPU by torch's `MemTracker` (a dispatch mode that follows
every tensor storage: parameters, gradients, optimizer state, activations, temporaries) around
one whole training step; the step times come from separate, interleaved rounds without it. The
three sessions start from the same weights, so their first losses on one batch agree.

    python benchmarks/checkpointing.py            # writes benchmarks/results/checkpointing.json
    python benchmarks/checkpointing.py --quick    # a smoke run (tiny GPT)
"""

from __future__ import annotations

from typing import Any

import common

MODES = ("none", "selective", "full")
CONFIGS = [("llm_bytes", "mid", common.mid("gpt")), ("vit_digits", "mid", common.mid("vit"))]
MiB = 2**20


def peak_memory(s, batch) -> dict[str, float]:
    """MiB at the peak of one step (forward, loss, backward, AdamW), by kind, and the activations
    alive when the forward ends (what the backward will read; at the peak itself, recomputed
    activations count as temporaries)."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    mt = MemTracker()
    mt.track_external(s.model, s.optimizer, *[v for v in batch.values() if isinstance(v, torch.Tensor)])
    with mt:
        total, _ = s.criterion(s.model(batch))
        after_forward = mt.get_tracker_snapshot("current")[torch.device("cpu")]
        total.backward()
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
    snap = mt.get_tracker_snapshot("peak")[torch.device("cpu")]
    out = {str(getattr(k, "value", k)).lower(): v / MiB for k, v in snap.items()}
    out["activation_after_forward"] = next(v for k, v in after_forward.items()
                                           if str(getattr(k, "value", k)).lower() == "activation") / MiB
    return out


def config(example: str, size: str, overrides: list[str], args) -> dict[str, Any]:
    import torch

    sessions = {m: common.session(common.load(example, [*overrides, f"train.activation_checkpointing={m}"]))
                for m in MODES}
    batch = common.batches(sessions["none"], 1)[0]
    first = {}
    for m, s in sessions.items():
        with torch.no_grad():
            first[m] = float(s.criterion(s.model(batch))[0])
    wrapped = {m: type(common.block(s.model, "trunk.blocks").layers[0]).__name__ for m, s in sessions.items()}
    trainers = {m: common.trainer(s) for m, s in sessions.items()}
    memory = {m: peak_memory(s, batch) for m, s in sessions.items()}
    rounds, steps = (2, 1) if args.quick else (args.rounds, args.steps)
    times = common.interleaved({m: t.train_step for m, t in trainers.items()}, rounds=rounds, steps=steps,
                               warmup=1)
    for s in sessions.values():
        s.close()
    row: dict[str, Any] = {"example": example, "size": size, "overrides": overrides, "layer_type": wrapped,
                           "first_loss": first, "modes": {}}
    for m in MODES:
        row["modes"][m] = {
            "peak_mib": memory[m],
            "step_s": common.summary(times["wall"][m]),
            "cpu_step_s": common.summary(times["cpu"][m]),
            "time_vs_none": common.ratios(times["cpu"][m], times["cpu"]["none"]),
            "peak_vs_none": memory[m]["total"] / memory["none"]["total"],
            "activations_vs_none": memory[m]["activation_after_forward"]
            / max(memory["none"]["activation_after_forward"], 1e-9),
        }
        r = row["modes"][m]
        print(f"{example:>10} {size:<4} {m:<9}: peak {memory[m]['total']:7.1f} MiB (activations after forward "
              f"{memory[m]['activation_after_forward']:6.1f}), step {r['step_s']['median'] * 1e3:7.1f} ms "
              f"({r['time_vs_none']['median']:.2f}x none)", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    started = common.machine()
    configs = [("llm_bytes", "tiny", [])] if args.quick else CONFIGS
    rows = [config(ex, size, ov, args) for ex, size, ov in configs]
    common.write(common.out_path(args, "checkpointing"), {"configs": rows}, started)


if __name__ == "__main__":
    main()

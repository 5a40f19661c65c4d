"""Tokens/s and MFU of the ~1B-parameter LLM (`benchmarks/gpu/llm_1b.l3m`) training on one GPU.

Each variant (a set of overrides: regional compile, float8, eager, ...) is built as `l3m train` builds
it and timed on the trainer's own `train_step()` (loader, forward, loss, backward, clipping, fused AdamW,
schedule) after warm-up steps, which include compilation. MFU is the step's FLOPs (`l3m.plan`, counted
on the meta device) per second over the bf16 matmul peak measured in the same process (an 8192³
product, as `l3m.train.perf` times it), and over the datasheet's dense bf16 peak when `--datasheet` is
given. Runs where `benchmarks/gpu.sh` runs it; on the CPU only `--quick` makes sense (a smoke test of
the script on a tiny model).

    python benchmarks/gpu_llm.py --out DIR                      # regional compile, float8, eager: 1.3B
    python benchmarks/gpu_llm.py --quick --variants eager       # a smoke test on the CPU
"""

from __future__ import annotations

import gc
import time
from typing import Any

import common

FILE = common.ROOT / "benchmarks" / "gpu" / "llm_1b.l3m"
VARIANTS = {
    "compiled": ["train.compile=true"],
    "blocks": ["train.compile=blocks"],
    "eager": ["train.compile=false"],
    "float8": ["train.compile=blocks", "train.float8=true"],  # torchao's float8 Linear layers (compute capability >= 8.9)
}
QUICK = ["dim=128", "depth=2", "context=128", "batch=2"]


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(started: float, what: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {what}", flush=True)


def measure(name: str, overrides: list[str], args, flops: float | None) -> dict[str, Any]:
    import torch

    import l3m
    from l3m.train import perf

    clock = time.perf_counter()
    compiled = l3m.load(str(args.file), [*overrides, *args.set])
    s = common.session(compiled)
    t = common.trainer(s)
    log(clock, f"{name}: session built on {s.device}")
    device = s.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    stats = t.train_step()
    sync(device)
    first = time.perf_counter() - t0
    log(clock, f"{name}: first step done ({first:.1f} s)")
    for _ in range(args.warmup - 1):
        t.train_step()
    sync(device)
    losses, times = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stats = t.train_step()
        losses.append(float(stats.logs["loss"]))  # the step's loss, read back: the step is done
        times.append(time.perf_counter() - t0)
    step = common.summary(times)
    sec = step["median"]
    row = {"variant": name, "overrides": overrides, "device": str(device),
           "params": sum(p.numel() for p in s.model.parameters()),
           "samples_per_step": stats.samples, "tokens_per_step": stats.tokens,
           "flops_per_sample": flops, "first_step_s": first, "step_s": step,
           "tokens_per_s": stats.tokens / sec, "achieved_flops": flops * stats.samples / sec if flops else None,
           "peak_memory_bytes": perf.memory_bytes(device), "losses": losses}
    s.close()
    del t, s
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--file", default=FILE, help="the .l3m file to train (default: the 1.3B LLM)")
    ap.add_argument("--variants", default="blocks,float8,eager", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--datasheet", type=float, default=0.0, help="the device's dense bf16 peak, FLOP/s")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides, PATH=VALUE")
    args = ap.parse_args(argv)
    import torch

    if args.quick:
        args.set = [*QUICK, *args.set]
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    started = common.machine()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        started["gpu"] = torch.cuda.get_device_name(device)
    from l3m.train import perf

    peak = perf.measured_peak_flops(device.type, torch.bfloat16, 8192 if device.type == "cuda" else 512)
    print(f"bf16 matmul peak measured: {peak / 1e12:.1f} TFLOP/s", flush=True)
    import l3m

    flops = common.flops_per_sample(l3m.load(str(args.file), args.set))  # the same for every variant
    rows = []
    for name in args.variants.split(","):
        try:
            row = measure(name, VARIANTS[name], args, flops)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others' numbers
            print(f"{name}: failed: {type(e).__name__}: {e}", flush=True)
            rows.append({"variant": name, "error": f"{type(e).__name__}: {e}"})
            continue
        row["mfu_measured_peak"] = row["achieved_flops"] / peak if row["achieved_flops"] else None
        if args.datasheet:
            row["mfu_datasheet"] = row["achieved_flops"] / args.datasheet if row["achieved_flops"] else None
        rows.append(row)
        print(f"{name}: {row['params'] / 1e9:.2f}B params, {row['tokens_per_s']:,.0f} tokens/s, "
              f"step {row['step_s']['median'] * 1e3:.0f} ms, first step {row['first_step_s']:.1f} s, "
              f"MFU {100 * (row['mfu_measured_peak'] or 0):.1f}% of measured peak"
              + (f", {100 * row['mfu_datasheet']:.1f}% of datasheet" if args.datasheet else "")
              + f", peak memory {row['peak_memory_bytes'] / 2**30:.1f} GiB, loss {row['losses'][0]:.3f}"
              f" -> {row['losses'][-1]:.3f}", flush=True)
    common.write(common.out_path(args, "gpu_llm"), {"bf16_peak_flops": peak, "datasheet_flops": args.datasheet,
                                                    "file": str(args.file), "rows": rows}, started)


if __name__ == "__main__":
    main()

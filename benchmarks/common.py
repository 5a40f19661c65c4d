"""What every benchmark shares: arguments, thread settings, the machine's description, robust
timing (interleaved rounds, medians and spreads) and loading an example into live objects.

The machine these numbers come from is small and shared: other processes come and go while a
benchmark runs. So nothing here trusts one measurement. Variants that are compared run side by
side in the same process, in rounds whose order alternates, and every number is a median over
rounds with its min/max; the load average before and after is kept with the results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ("llm_bytes", "vit_digits", "aimv1_digits", "aimv2_digits", "aimv2_moe_digits", "clip_digits")

if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))
USER_ENV = dict(os.environ)  # before the line below: what a user's own run would see
os.environ.setdefault("WANDB_MODE", "disabled")  # benchmarks measure training, not logging


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run on tiny sizes (results are not published)")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory for the JSON (default: benchmarks/results; --quick writes only when given)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: steadiest on a small shared machine)")
    return ap


def out_path(args: argparse.Namespace, name: str) -> Path | None:
    """Where to write `name`.json, or None (a quick run without --out publishes nothing)."""
    if args.out is not None:
        return Path(args.out) / f"{name}.json"
    return None if args.quick else RESULTS / f"{name}.json"


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def machine(with_torch: bool = True) -> dict[str, Any]:
    """What the numbers were measured on (`with_torch=False`: for benchmarks of processes that never load it)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    threads, version = 0, None
    if with_torch:
        import torch

        threads, version = torch.get_num_threads(), torch.__version__
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": version,
            "python": platform.python_version(),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return info if with_torch else {k: v for k, v in info.items() if k != "torch"}


def write(path: Path | None, data: Mapping[str, Any], started: dict[str, Any]) -> None:
    """Write `data` with the machine description (load average at start and at the end)."""
    if path is None:
        return
    env = dict(started)
    env["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": env, **data}, indent=2) + "\n")
    print(f"wrote {path}")


# -- statistics ---------------------------------------------------------------------------------


def summary(xs: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count: the spread says how much to trust the median."""
    xs = list(xs)
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def time_steps(fn: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Mean (wall, CPU) seconds per call over `steps` calls.

    CPU time (`time.process_time`, every thread of this process) leaves out the time another
    process held the core, so on a shared machine it is the steadier of the two for ratios.
    """
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps


def interleaved(
    variants: Mapping[str, Callable[[], Any]], *, rounds: int, steps: int, warmup: int = 2
) -> dict[str, dict[str, list[float]]]:
    """`{"wall"|"cpu": {variant: per-round mean step times}}`, the variants taking turns.

    Each round runs `steps` steps of every variant; the order rotates from round to round, so a
    burst of load from another process lands on all variants alike rather than on one.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    times: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in names}, "cpu": {n: [] for n in names}}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            wall, cpu = time_steps(variants[name], steps)
            times["wall"][name].append(wall)
            times["cpu"][name].append(cpu)
    return times


def ratios(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Summary of the per-round ratios a/b (each round's pair ran back to back)."""
    return summary([x / y for x, y in zip(a, b)])


# -- examples ------------------------------------------------------------------------------------


def mid(model: str) -> list[str]:
    """The mid size of an example (dim 256, depth 4, 4 heads): overrides start with the example's model
    name (`gpt.depth`, `vit.depth`)."""
    return ["dim=256", f"{model}.depth=4", f"{model}.heads=4"]


def example_path(name: str) -> str:
    return str(ROOT / "examples" / f"{name}.l3m")


def load(name: str, overrides: Sequence[str] = ()):
    """The compiled example (raises CompileError when it does not compile)."""
    import l3m

    return l3m.load(example_path(name), list(overrides))


def session(compiled, *, command: str = "train"):
    """A one-process `Session` (model, criterion, optimizer, loaders) as `l3m train` builds it."""
    from l3m.train.session import Runtime, build_session, pick_device

    return build_session(compiled, Runtime(device=pick_device(0)), command=command)  # a GPU where there is one


def trainer(s):
    """A `Trainer` for `s` that logs and saves nothing: `train_step()` is what `l3m train` runs."""
    import tempfile

    from l3m.train.engine import Trainer
    from l3m.train.logging import RunLogger

    return Trainer(s, Path(tempfile.gettempdir()), RunLogger.null(), ckpt=None)  # type: ignore[arg-type]


def block(model, path: str):
    """The block module at `path` (`trunk.blocks`: under the root model, `gpt.trunk.blocks`),
    however the MetaModel nests it."""
    from torch import nn

    try:
        m = model.get_submodule(path)
    except AttributeError:  # parameter names start with the root model's name
        m = model.get_submodule(f"{next(iter(model._modules))}.{path}")
    inner = getattr(m, "block", None)  # older MetaModels wrap each block in a ReadWriteBlock
    return inner if isinstance(inner, nn.Module) else m


def logits_of(model, batch, key: str = "logits"):
    """`model(batch)[key]` in evaluation mode: in training, an LM head fused with its loss
    (`l3m.model.fusion`) hands the loss its sums and writes no logits."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(batch)[key]
    finally:
        model.train(was)


def batches(s, n: int) -> list[dict[str, Any]]:
    """The first `n` training batches of a session (to time steps without the loader)."""
    return [next(s.train_loader) for _ in range(n)]


def flops_per_sample(compiled) -> float | None:
    """FLOPs of one training sample (forward + backward), measured by `l3m.plan` on meta."""
    from l3m.plan import plan

    p = plan(compiled.program, 1, schedule=compiled.flow.model_order())
    f = p["flops_per_sample"]
    return float(f["total"]) if f else None


def matmul_peak(dtype_name: str, n: int = 1024, reps: int = 5) -> float:
    """FLOP/s of a square matmul in `dtype_name` ("fp32" or "bf16") on the CPU, best of `reps`.

    Timed as `l3m.train.perf.measured_peak_flops` times it (which keeps the CPU in fp32, so the
    bf16 peak is timed here), at a size where either dtype reaches its speed.
    """
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best

"""Throughput numbers for the progress line: tokens in a batch, memory, peak FLOP/s, MFU.

MFU compares the FLOPs a step needs (`l3m.plan`, measured on the meta device) with what the
device could do. The peak comes from `L3M_PEAK_FLOPS` (FLOP/s per device) when set, otherwise
from timing a large matmul once per process: an honest "fraction of what this machine reaches
on matmuls", not of a datasheet number.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def count_tokens(batch: Mapping[str, Any], keys: Sequence[str]) -> int:
    """Elements of the integer (non-bool) sequences `[B, N, ...]` among `keys`: the tokens the model
    reads. Per-sample integers (`[B]`: labels, prefix lengths) are not tokens."""
    n = 0
    for k in keys:
        t = batch.get(k)
        if (isinstance(t, torch.Tensor) and t.dim() >= 2 and not t.is_floating_point() and not t.is_complex()
                and t.dtype != torch.bool):
            n += t.numel()
    return n


def batch_size(batch: Mapping[str, Any], keys: Sequence[str]) -> int:
    """Samples in a batch: the leading dimension of the first model input (else any tensor)."""
    for k in [*keys, *batch]:
        t = batch.get(k)
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return 0


def memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a GPU; the process's resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)


@functools.cache
def measured_peak_flops(device_type: str, dtype: torch.dtype, n: int = 0) -> float:
    """FLOP/s of an n x n matmul on this device (n = 0: 4096 on a GPU, 512 on a CPU), timed once per process."""
    n = n or (4096 if device_type == "cuda" else 512)
    gen = torch.Generator(device=device_type).manual_seed(0)  # never touch the global generators
    a = torch.randn(n, n, device=device_type, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device_type, dtype=dtype, generator=gen)
    reps = 10 if device_type == "cuda" else 3
    (a @ b).sum().item()  # warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-9)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    env = os.environ.get("L3M_PEAK_FLOPS")
    if env:
        try:
            value = float(env)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    return measured_peak_flops(device.type, dtype)


def human(x: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}{unit}"
    return f"{x:.1f}{unit}" if isinstance(x, float) and x != int(x) else f"{int(x)}{unit}"


def human_bytes(x: float) -> str:
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if x >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{int(x)}B"


def human_time(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def compile_cache_note() -> str:
    """How much of this process's compilation came from inductor's on-disk cache (shared by every run of
    this user: a second run of the same model compiles from it), as a suffix for the compile-time line."""
    try:
        from torch._dynamo.utils import counters
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # an older torch: no cache report
        return ""
    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    if not hits + misses:
        return ""
    return f" (inductor cache {cache_dir()}: {hits} of {hits + misses} graphs reused)"

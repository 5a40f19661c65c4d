"""Accelerators `l3m plan --device` knows: memory and dense peak FLOP/s per dtype.

Vendor datasheet figures for dense math (no 2:4 sparsity); memory as the driver reports it
(`nvidia-smi` / `rocm-smi` MiB). `cpu` is this machine: its RAM, and FLOP/s measured on the
spot with a short matmul (so it is what this CPU does, not a datasheet).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

GiB = 2**30
T = 1e12


@dataclass(frozen=True)
class Device:
    name: str
    memory: int  # bytes
    flops: dict[str, float | None]  # dense peak FLOP/s by dtype ("bf16", "fp16", "fp8", "fp32"); None: no such unit
    note: str = ""


DEVICES: dict[str, Device] = {
    "H100": Device("H100 80GB SXM", 81559 * 2**20, {"bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T,
                                                    "fp32": 66.9 * T}),
    "H200": Device("H200 141GB SXM", 143771 * 2**20, {"bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T,
                                                      "fp32": 66.9 * T}),
    "A100-40GB": Device("A100 40GB SXM", 40960 * 2**20, {"bf16": 312 * T, "fp16": 312 * T, "fp8": None,
                                                         "fp32": 19.5 * T}),
    "A100-80GB": Device("A100 80GB SXM", 81920 * 2**20, {"bf16": 312 * T, "fp16": 312 * T, "fp8": None,
                                                         "fp32": 19.5 * T}),
    "MI300X": Device("AMD MI300X 192GB", 196592 * 2**20, {"bf16": 1307.4 * T, "fp16": 1307.4 * T,
                                                          "fp8": 2614.9 * T, "fp32": 163.4 * T}),
    "L40S": Device("L40S 48GB", 46068 * 2**20, {"bf16": 362.05 * T, "fp16": 362.05 * T, "fp8": 733 * T,
                                                "fp32": 91.6 * T}),
}
ALIASES = {"h100": "H100", "h100-80gb": "H100", "h200": "H200", "a100": "A100-80GB", "a100-40gb": "A100-40GB",
           "a100-80gb": "A100-80GB", "mi300x": "MI300X", "l40s": "L40S"}
HEADROOM = 0.90  # of the memory a step may plan to use: allocator fragmentation, CUDA context, NCCL buffers


def names() -> list[str]:
    return [*DEVICES, "cpu"]


def lookup(name: str) -> Device | None:
    """The device called `name` (case-insensitive), `cpu` for this machine; None when unknown."""
    if name.lower() == "cpu":
        return this_cpu()
    key = ALIASES.get(name.lower(), name)
    return DEVICES.get(key) or next((d for k, d in DEVICES.items() if k.lower() == name.lower()), None)


def _ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _matmul_flops(dtype_name: str, n: int = 512, reps: int = 3) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def this_cpu() -> Device:
    """This machine: its RAM and the FLOP/s of a 512² matmul measured now (all torch threads)."""
    bf16 = _matmul_flops("bf16")
    return Device(f"cpu ({os.cpu_count()} cores, this machine)", _ram(),
                  {"fp32": _matmul_flops("fp32"), "bf16": bf16, "fp16": bf16, "fp8": None},
                  note="FLOP/s measured with a 512x512 matmul")


# Flags (Linux /proc/cpuinfo) of the CPU units that make a dtype's matmuls faster than fp32 ones.
_MATRIX_UNITS = {"bf16": {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "bf16": "Arm BF16"},
                 "fp16": {"amx_fp16": "AMX-FP16", "avx512_fp16": "AVX512-FP16", "asimdhp": "Arm FP16"}}


def _cpu_flags() -> set[str] | None:
    """This CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_low_precision_note(dtype: str, flags: set[str] | None = None) -> str | None:
    """Advice when training in `dtype` on a CPU without matrix units for it: there bf16/fp16 only add
    casts to fp32 work, so they are slower than fp32 in every framework. None when the CPU has the
    units, the dtype is fp32, or the flags are unknown."""
    units = _MATRIX_UNITS.get(dtype)
    flags = _cpu_flags() if flags is None else flags
    if units is None or flags is None or flags & set(units):
        return None
    names = " or ".join(sorted(set(units.values())))
    return (f"train.dtype = {dtype} on a CPU without {dtype} matrix units ({names}): {dtype} runs slower than "
            f"fp32 here, in any framework; use train.dtype = fp32 on this machine")

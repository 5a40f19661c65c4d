"""Freed host memory kept in the process while training on the CPU (`train.keep_freed_memory`).

The CPU has no caching allocator: every activation of a step is a `malloc` and a `free`. glibc serves
large blocks with fresh mmaps and hands freed memory back to the OS (its thresholds adapt, but not to
a step's pattern of sizes), so the next step page-faults on the same buffers again: 1,956 faults and
3.7 ms of system time in a 30 ms step of the tiny Llama here, 12% of it. Raising the mmap threshold to
glibc's maximum (32 MiB on 64-bit) and the trim threshold to 1 GiB keeps those blocks in the heap for the
next step: no faults, 9-15% faster steps for the tiny Llama, 0-14% more samples/s for the examples
(benchmarks/NOTES.md, "Page faults"). The price is that the process keeps its peak resident, which a
training step reaches again anyway. Other C libraries, macOS and Windows are left as they are.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1 << 30


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a glibc system, or no confstr at all
        return False


def keep_for_run(device_type: str, keep: bool) -> None:
    """`train.keep_freed_memory` for a run on `device_type`: only the CPU's steps allocate host memory."""
    if device_type == "cpu" and keep:
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse; True when it took (glibc only)."""
    if not is_glibc():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

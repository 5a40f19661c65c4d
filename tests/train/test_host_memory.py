"""`train.keep_freed_memory`: on the CPU, a block a step frees stays in the process for the next step."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from l3m.train import host_memory

# In a fresh process: is a 16 MiB block (an activation of a CPU step) a mapping of its own, and is it
# still in the heap, for the next step, once freed? glibc's own answer, from mallinfo2.
BLOCK_FATE = """
import ctypes, sys, torch
from l3m.train.host_memory import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
info = ctypes.CDLL(None).mallinfo2
info.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = info().hblkhd
block = torch.empty(16 << 20, dtype=torch.uint8)
mapped = info().hblkhd - before >= 16 << 20
del block
kept = info().fordblks >= 16 << 20
print(int(mapped), int(kept))
"""


def block_fate(mode: str) -> tuple[bool, bool]:
    out = subprocess.run([sys.executable, "-c", BLOCK_FATE, mode], capture_output=True, text=True, check=True)
    mapped, kept = out.stdout.split()[-2:]
    return mapped == "1", kept == "1"


@pytest.mark.skipif(not host_memory.is_glibc() or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc >= 2.33 only")
def test_a_freed_block_stays_in_the_heap_for_the_next_step():
    assert block_fate("plain") == (True, False)  # glibc's default: mapped, and given back when freed
    assert block_fate("keep") == (False, True)


def test_the_trainer_keeps_memory_only_when_asked_on_the_cpu(monkeypatch):
    from l3m.config import TrainConfig

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert TrainConfig().keep_freed_memory is True
    for device, keep, expected in (("cpu", True, 1), ("cpu", False, 0), ("meta", True, 0)):
        calls.clear()
        host_memory.keep_for_run(device, TrainConfig(keep_freed_memory=keep).keep_freed_memory)
        assert len(calls) == expected


def test_the_switch_as_typed():
    from helpers import ROOT

    def lint(value: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "l3m", "lint", "examples/vit_digits.l3m",
                               f"train.keep_freed_memory={value}"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120, env={**os.environ, "NO_COLOR": "1"})

    off, typo = lint("false"), lint("maybe")
    assert off.returncode == 0, off.stderr
    assert typo.returncode == 1 and "error[E602]" in typo.stderr + typo.stdout and "Traceback" not in typo.stderr

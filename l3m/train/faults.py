"""Faults on purpose, for the fault-injection tests (`tests/faults/`); inert unless `L3M_FAULT` is set.

`L3M_FAULT` is one action and where it strikes, comma-separated:

    kill,step=7          SIGKILL this process after step 7 (logged, evaluated and checkpointed)
    raise,step=2,rank=1  raise an error on rank 1 after step 2 (a rank that dies in a multi-process run)
    enospc,checkpoint=4  "No space left on device" in the middle of writing the checkpoint of step 4

`rank` limits the fault to one rank (default: every rank). The variable is read at each hook, so
a test may set it in-process; malformed values are ignored (this is not a user-facing setting).
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "L3M_FAULT"


class InjectedFault(RuntimeError):
    """The error `raise,...` raises: a stand-in for any failure inside a training step."""


def _spec() -> tuple[str, dict[str, int]] | None:
    raw = os.environ.get(ENV, "")
    if not raw:
        return None
    action, *rest = raw.split(",")
    where: dict[str, int] = {}
    for item in rest:
        key, _, value = item.partition("=")
        try:
            where[key.strip()] = int(value)
        except ValueError:
            return None
    return action.strip(), where


def _hit(point: str, value: int, rank: int) -> str | None:
    spec = _spec()
    if spec is None:
        return None
    action, where = spec
    if where.get(point) != value or where.get("rank", rank) != rank:
        return None
    return action


def after_step(step: int, rank: int) -> None:
    """Called once a training step is fully done (logged, evaluated, checkpointed)."""
    action = _hit("step", step, rank)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise InjectedFault(f"rank {rank} failed on purpose after step {step} ({ENV})")


def during_checkpoint(step: int, rank: int, directory: Path) -> None:
    """Called between the tensors and the state files of a checkpoint being written: a disk that
    fills up here leaves a half-written directory behind, as a real one would."""
    if _hit("checkpoint", step, rank) == "enospc":
        partial = directory / f"rank_{rank}.json"
        partial.write_text('{"rank": ')  # what a write cut short leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))

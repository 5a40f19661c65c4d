"""When one process of a multi-process run fails: name it, and tell the launcher why.

Under torchrun a rank that exits with an error makes the agent stop the others (SIGTERM) and
print a summary naming the first rank that failed; its `traceback` line is read from the file
torchrun names in `TORCHELASTIC_ERROR_FILE`, which l3m writes with the rank's own message. The
ranks that merely lost their peer (a collective that failed because the other side went away)
say so instead of reporting an internal error, and leave the error file alone so that the
summary's root cause stays the rank that really failed.
"""

from __future__ import annotations

import json
import os
import time

# What gloo and NCCL say when the other side of a collective is gone or never answers.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
              "timed out", "Timeout", "NCCL communicator was aborted", "ProcessGroupNCCL", "recvBytes", "sendBytes")


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def rank_prefix() -> str:
    """`rank N: ` in a multi-process run, else nothing."""
    return f"rank {os.environ.get('RANK', '0')}: " if world_size() > 1 else ""


def peer_lost(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another rank died or hung."""
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(e, RuntimeError)):
        return False
    text = str(e)
    return isinstance(e, getattr(dist, "DistNetworkError", ())) or any(s in text for s in _PEER_LOST)


def peer_lost_message(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (f"another process of this run stopped (it failed or was killed; its message is above), "
            f"so this one stops too ({first[:200]})")


def record_failure(message: str, details: str = "") -> None:
    """Write this rank's failure where torchrun looks for it (nothing when not under torchrun)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or world_size() <= 1:
        return
    data = {"message": {"message": message,
                        "extraInfo": {"py_callstack": message + ("\n" + details if details else ""),
                                      "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except OSError:
        pass  # the launcher's summary is a nicety; the message itself is already on stderr

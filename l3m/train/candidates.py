"""Why a run directory has nothing to resume from: each candidate checkpoint with its reason.

`--resume` insists on a checkpoint; when none verifies, the error lists every entry of `ckpt/`
(a partial write, a damaged checkpoint, one set aside earlier, a stray file) with why it was
rejected, so the user can tell a run that never saved from one whose checkpoints were damaged.
"""

from __future__ import annotations

import re
from pathlib import Path

from l3m.train.checkpoint import MARKER, verify
from l3m.train.safe_dcp import UnsafeCheckpoint

_STEP = re.compile(r"step_\d+\Z")


def rejection(path: Path) -> str:
    """Why `path` (an entry of a run's `ckpt/` directory) cannot be resumed from."""
    name = path.name
    if name.endswith(".tmp"):
        return "an unfinished write (the run stopped while saving it)"
    if name.endswith(".skipped"):
        return "set aside by an earlier resume (it lay past the checkpoint that run continued from)"
    if not _STEP.match(name):
        return "not a checkpoint (checkpoints are directories named step_NNNNNN)"
    if path.is_symlink():
        return "a symlink (refused)"
    if not path.is_dir():
        return "not a directory"
    try:
        problem = verify(path)
    except UnsafeCheckpoint as e:
        return f"refused: {e}"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return problem or f"whole (it has a {MARKER} manifest that matches its files)"


def no_checkpoint_message(root: Path) -> str:
    """The `--resume` error when no checkpoint under `root` can be used, one line per candidate."""
    head = f"--resume: no complete checkpoint to resume from in {root}"
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        return f"{head}: {root} {what} (this run directory has never saved a checkpoint)"
    entries = sorted(root.iterdir())
    if not entries:
        return f"{head}: the directory is empty (the run stopped before its first checkpoint)"
    lines = [f"{head}; rejected:"] + [f"  {p.name}: {rejection(p)}" for p in entries]
    lines.append("(pass --no-resume to start afresh; the old checkpoints are then kept in ckpt.prev/)")
    return "\n".join(lines)

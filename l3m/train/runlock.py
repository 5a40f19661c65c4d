"""One writer per run directory: `RUN_DIR/l3m.lock`, held with `flock` while a run trains.

The lock is the kernel's (`fcntl.flock` on the open file), so it goes away with its process,
however that process ends; the file's content (pid, host, start time, command) only names the
owner in the message a second run prints. A lock file left by a dead process holds no lock any
more and is taken over. The owner deletes the file when it finishes; a run that finds the file
replaced between opening and locking it (the owner just deleted it) opens it again.

Processes forked while the lock is held (data-loader workers) close their copy of its file at
once, so that a killed run's orphaned workers do not keep its directory locked.

Only global rank 0 takes the lock (the run directory is one for all ranks). On file systems
without locks (some network mounts) the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = "l3m.lock"


_HELD: set[int] = set()  # lock file descriptors this process holds


def _close_in_child() -> None:
    """A forked child (a data-loader worker) must not keep the lock alive after its parent dies."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirLocked(OSError):
    """Another live process trains into the same run directory (exit code 2)."""


def _owner_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {info['pid']} on {info['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file names no owner yet)"


class RunLock:
    """`acquire()` or raise `RunDirLocked`; `release()` when the run ends. `note`: a line about a
    recovered stale lock or a file system without locks, for the run's log."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.note: str | None = None

    def acquire(self) -> RunLock:
        for _ in range(20):  # the owner may delete the file between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirLocked(
                        f"run directory {self.path.parent} is in use by {_owner_text(self.path)} "
                        f"(lock {self.path}); wait for it, stop it, or train into another --output") from None
                self.note = f"cannot lock {self.path} ({e.strerror}); make sure no other run writes here"
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.read(fd, 4096)
            if previous.strip():
                self.note = f"took over the lock of a process that is gone ({_owner_text(self.path)})"
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
            os.fsync(fd)
            self._fd = fd
            _HELD.add(fd)
            return self
        raise RunDirLocked(f"cannot take the lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Delete the file, then drop the lock (in that order, so no one locks a deleted file)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

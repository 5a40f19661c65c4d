"""Stopping on SIGTERM / SIGINT: finish the step, save a checkpoint, exit 128 + the signal.

SLURM (before its time limit or on preemption, then SIGKILL after `KillWait`) and Kubernetes
(then SIGKILL after the grace period) send SIGTERM; a terminal sends SIGINT on Ctrl-C. The
first one only sets a flag: the training loop finishes the step it is in (and a checkpoint write
that has begun), all ranks agree on the step to stop at (the flag is reduced across ranks, since a
signal may reach one rank only), a checkpoint is written at that step and the process exits with
`128 + signal number` (143 for SIGTERM, 130 for SIGINT): the code a shell gives a process killed
by that signal, which job scripts and Kubernetes pod-failure policies already test for, and not
0, so that nothing takes the unfinished run for a finished one. When the stop lands on a step
that is due to evaluate, the evaluation is left to the resumed run (it runs first there), so the
grace period goes to the checkpoint. A second SIGINT (Ctrl-C again: a person at a terminal) aborts
at once (`Abort`, a KeyboardInterrupt; exit 130), except inside the few lines that rename a checkpoint
into place, which it lets finish: checkpoints are written into a `.tmp` directory first, so an
abort never damages one. A repeated SIGTERM does not abort: schedulers send it more than once (SLURM
signals the job step and its processes, torchrun forwards it to every rank again), and cutting the
checkpoint short would lose the grace period it was sent for; the SIGKILL after the grace period is
what ends a stuck save.

Under torchrun a rank that exits non-zero makes the launcher stop the others and report a
failure (with each rank's exit code); launch with `--max-restarts 0` (the default) so that it
does not restart a run that was asked to stop.

Data-loader worker processes forked after the handlers are installed inherit them; the handler
does nothing in any process but the one that installed it, so a Ctrl-C reaching the workers
does not kill the batches the main process still needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by `signum` (the shell's code for a death by that signal)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint at `step` (`checkpoint`: its path,
    None when there was nothing new to save)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"saved checkpoint {checkpoint}" if checkpoint else "nothing new to save"
        super().__init__(f"stopped by {signal_name(signum)} at step {step}; {where}; "
                         "run the same command again (or with --resume) to continue")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class Abort(KeyboardInterrupt):
    """A second stop signal: give up at once (`signum`: SIGINT or SIGTERM, for the exit code)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class StopSignals:
    """Turns the first SIGTERM/SIGINT into a stop request; the second aborts (see the module)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.announce = True  # say so on stderr when the first signal arrives (rank 0 only)
        self._pid = os.getpid()
        self._critical = 0
        self._abort_pending = 0  # the second signal, held back by a critical section
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: the main process decides
            return
        if self.signum is None:
            self.signum = signum
            if not self.announce:
                return
            with contextlib.suppress(OSError):  # os.write: safe where a print could re-enter its stream
                os.write(2, (f"\nl3m: {signal_name(signum)} received; stopping after this step with a checkpoint "
                            + ("(Ctrl-C again to abort now)\n" if signum == signal.SIGINT else "\n")).encode())
            return
        if signum != signal.SIGINT:  # a scheduler repeating itself, not a person: the save goes on
            return
        if self._critical:
            self._abort_pending = signum
            return
        raise Abort(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the stop signals for the duration (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, old in self._previous.items():
                signal.signal(s, old)  # type: ignore[arg-type]
            self._previous.clear()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a second signal must not cut short (renaming a checkpoint into place)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if not self._critical and self._abort_pending:
                signum, self._abort_pending = self._abort_pending, 0
                raise Abort(signum)


_ACTIVE: StopSignals | None = None


def active() -> StopSignals | None:
    """The handler of the running `l3m train`, if any (the checkpoint writer guards its renames)."""
    return _ACTIVE


@contextlib.contextmanager
def handle_stop_signals() -> Iterator[StopSignals]:
    global _ACTIVE
    stop = StopSignals()
    previous, _ACTIVE = _ACTIVE, stop
    try:
        with stop.installed():
            yield stop
    finally:
        _ACTIVE = previous


def critical_section() -> contextlib.AbstractContextManager[None]:
    return _ACTIVE.critical() if _ACTIVE is not None else contextlib.nullcontext()

"""One writer per run directory: a second `l3m train --output D` exits 2 naming the owner; the lock
of a dead process is taken over; the lock file goes away with a run that ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from fault_utils import ROOT, l3m, write_program

from l3m.train.api import train_main
from l3m.train.runlock import LOCK_NAME, RunDirLocked, RunLock

HOLD = """
import sys, time
from l3m.train.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")
    monkeypatch.delenv("L3M_FAULT", raising=False)
    monkeypatch.chdir(tmp_path)


def _holder(run) -> subprocess.Popen:
    """Another process holding the run directory's lock (as a training run would)."""
    run.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_into_a_locked_directory_exits_2(tmp_path, quiet, capsys):
    program = write_program(tmp_path)
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        proc = l3m("train", str(program), "--output", str(run), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
        assert len(errors) == 1, proc.stderr
        assert f"is in use by pid {holder.pid} on {socket.gethostname()}" in errors[0]
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file is left, its lock is not
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    assert train_main(str(program), ["train.steps=1"], output=str(run)) == 0
    assert f"took over the lock of a process that is gone (pid {holder.pid}" in capsys.readouterr().err
    assert not (run / LOCK_NAME).exists()  # released with the run


def test_lock_is_held_for_the_run_and_released_after(tmp_path, quiet, monkeypatch):
    program = write_program(tmp_path)
    run = tmp_path / "run"
    seen = []

    import l3m.train.engine as engine

    fit = engine.Trainer.fit

    def checking_fit(self):
        with pytest.raises(RunDirLocked):  # while training, nobody else gets the directory
            RunLock(run).acquire()
        seen.append(json.loads((run / LOCK_NAME).read_text()))
        return fit(self)

    monkeypatch.setattr(engine.Trainer, "fit", checking_fit)
    assert train_main(str(program), ["train.steps=1"], output=str(run)) == 0
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert not (run / LOCK_NAME).exists()
    with RunLock(run) as lock:  # free again
        assert lock.note is None


def test_lock_file_replaced_under_a_waiting_process(tmp_path):
    """The owner deletes the file as it releases: a newcomer never keeps a lock on a deleted file."""
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirLocked):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    second = RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).is_file() and second.note is None
    second.release()


def test_stop_signal_releases_the_lock(tmp_path, quiet, monkeypatch, capsys):
    """SIGTERM before the first step: exit 143, nothing saved, the lock file gone."""
    program = write_program(tmp_path)
    run = tmp_path / "run"

    import l3m.train.engine as engine

    fit = engine.Trainer.fit

    def signalled_fit(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler l3m installed only asks the loop to stop
        return fit(self)

    monkeypatch.setattr(engine.Trainer, "fit", signalled_fit)
    assert train_main(str(program), output=str(run)) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 0; nothing new to save" in capsys.readouterr().err
    assert not (run / LOCK_NAME).exists() and not (run / "ckpt").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


FORK_AND_DIE = """
import os, signal, sys, time
from l3m.train.runlock import RunLock
RunLock(sys.argv[1]).acquire()
child = os.fork()  # as a data-loader worker would be
if child == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)  # let go of the test's pipes
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_forked_workers_do_not_keep_the_lock(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FORK_AND_DIE, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    orphan = int(proc.stdout.strip())
    try:
        os.kill(orphan, 0)  # still alive, holding a copy of the parent's descriptors but not the lock
        lock = RunLock(tmp_path).acquire()
        assert lock.note and "a process that is gone" in lock.note
        lock.release()
    finally:
        os.kill(orphan, signal.SIGKILL)

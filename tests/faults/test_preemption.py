"""SIGTERM / SIGINT: the run finishes its step, saves a checkpoint at that step, exits 128 + signal
with one line, and `--resume` continues to the very losses and weights of an uninterrupted run,
wherever the signal landed (in a step, in an evaluation, in a checkpoint write, at a random moment
from outside). A second signal aborts at once and leaves the earlier checkpoints whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fault_utils import env
from signal_utils import (
    assert_same_weights,
    losses,
    popen_cli,
    run_cli,
    setup,
    steps_saved,
    stop_line,
)

from l3m.train.api import train_main
from l3m.train.checkpoint import verify
from l3m.train.preempt import StopSignals, exit_code


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(directory, program, wrapper, uninterrupted reference run), shared by the tests."""
    base = tmp_path_factory.mktemp("preempt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L3M_DEVICE", "cpu")
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("L3M_PEAK_FLOPS", "1e11")
        mp.delenv("L3M_FAULT", raising=False)
        mp.chdir(base)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same kernels, the same bits
        try:
            program, wrapper = setup(base)
            ref = base / "ref"
            assert train_main(str(program), output=str(ref)) == 0
            yield base, program, wrapper, ref
        finally:
            torch.set_num_threads(threads)


def _stopped(proc, step: int, signum: int = signal.SIGTERM) -> None:
    assert proc.returncode == exit_code(signum) == 128 + signum, proc.stderr
    line = stop_line(proc.stderr)
    assert f"stopped by {signal.Signals(signum).name} at step {step}; saved checkpoint" in line, line
    assert f"step_{step:06d}" in line


def test_sigterm_at_each_moment_then_resume_is_bit_exact(world):
    base, program, wrapper, ref = world
    run = base / "moments"
    train = ["train", str(program), "--output", str(run)]

    # in step 3, which is due to evaluate: no time for it, the resumed run evaluates step 3 first
    proc = run_cli(wrapper, *train, cwd=base, SIG_AT="step:3")
    _stopped(proc, 3)
    assert "SIGTERM received; stopping after this step" in proc.stderr
    assert steps_saved(run) == [3]
    assert ("val", 3) not in losses(run)

    # in that deferred evaluation: it finishes, and step 3 is saved again as evaluated (not twice logged)
    proc = run_cli(wrapper, *train, "--resume", cwd=base, SIG_AT="eval:3")
    _stopped(proc, 3)
    assert ("val", 3) in losses(run)

    # while the checkpoint of step 4 is written: the write finishes, nothing more is saved
    proc = run_cli(wrapper, *train, "--resume", cwd=base, SIG_AT="ckpt:4")
    _stopped(proc, 4)
    assert ("val", 3) in losses(run)
    assert steps_saved(run) == [3, 4] and verify(run / "ckpt" / "step_000004") is None

    # in the evaluation of step 6: it finishes and is logged, then the checkpoint
    proc = run_cli(wrapper, *train, "--resume", cwd=base, SIG_AT="eval:6")
    _stopped(proc, 6)
    assert ("val", 6) in losses(run)

    assert train_main(str(program), output=str(run), resume=True) == 0
    assert losses(run) == losses(ref)  # every train and eval loss, each step once
    assert sorted(losses(ref)) == sorted([("train", s) for s in range(1, 9)] + [("val", 3), ("val", 6), ("val", 8)])
    assert_same_weights(ref, run)


def test_sigterm_from_outside_at_any_moment(world):
    base, program, wrapper, ref = world
    run = base / "outside"
    proc = popen_cli(wrapper, "train", str(program), "--output", str(run), cwd=base, NAP="0.15")
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().count("\n") >= 2:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the run never logged two steps"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    stop_line(err)
    stopped_at = steps_saved(run)[-1]
    assert 2 <= stopped_at < 8
    assert max(s for split, s in losses(run) if split == "train") == stopped_at  # nothing logged past the save

    assert train_main(str(program), output=str(run), resume=True) == 0
    assert losses(run) == losses(ref)
    assert_same_weights(ref, run)


def test_second_signal_aborts_and_keeps_earlier_checkpoints(world):
    base, program, wrapper, ref = world
    run = base / "abort"
    proc = run_cli(wrapper, "train", str(program), "--output", str(run), "train.checkpoint_every=2",
                   cwd=base, SIG_AT="ckpt:4", SIG_COUNT="2", SIG_NAME="SIGINT")
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "l3m: interrupted" in proc.stderr
    assert steps_saved(run) == [2]  # the write of step 4 was cut short: only its .tmp is left
    assert verify(run / "ckpt" / "step_000002") is None
    assert (run / "ckpt" / "step_000004.tmp").is_dir()

    assert train_main(str(program), ["train.checkpoint_every=2"], output=str(run), resume=True) == 0
    assert not (run / "ckpt" / "step_000004.tmp").exists()
    assert losses(run) == losses(ref)
    assert_same_weights(ref, run)


def test_second_signal_waits_for_a_rename_in_progress():
    stop = StopSignals()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first only asks to stop
        with pytest.raises(KeyboardInterrupt), stop.critical():
            os.kill(os.getpid(), signal.SIGINT)
            done = True  # the section runs to its end before the abort
        assert done
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_repeated_sigterm_does_not_cut_the_save_short():
    """Schedulers send SIGTERM more than once (SLURM to the step and its processes, torchrun again to each
    rank): only the first counts, and the checkpoint it asked for is still written."""
    stop = StopSignals()
    stop.announce = False
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # no Abort
        with stop.critical():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.requested


@pytest.mark.dist
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(world):
    """Under torchrun, SIGTERM reaching rank 1 only: both ranks stop after the same step and write
    one whole checkpoint there together; rank 0 says so."""
    base, program, wrapper, _ = world
    run = base / "two_ranks"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(wrapper)]
    proc = subprocess.run([*launcher, "train", str(program), "--output", str(run)], cwd=base, capture_output=True,
                          text=True, timeout=300, env=env(SIG_AT="step:3", SIG_RANK="1"))
    assert "exitcode  : 143" in proc.stderr, proc.stderr  # torchrun reports the ranks' exit codes
    assert "l3m: stopped by SIGTERM at step 3; saved checkpoint" in proc.stderr
    assert steps_saved(run) == [3]
    assert {"rank_0.json", "rank_1.json"} <= {p.name for p in (run / "ckpt" / "step_000003").iterdir()}
    assert verify(run / "ckpt" / "step_000003") is None
    assert max(s for split, s in losses(run) if split == "train") == 3


def test_a_checkpoint_killed_while_being_replaced_is_put_back(tmp_path):
    """Killed between the two renames that replace a step saved again: the old copy returns."""
    from l3m.train.checkpoint import CheckpointManager

    ckpt = CheckpointManager(tmp_path / "ckpt", report=lambda t: None)
    saved = ckpt.save(1, {"step": 1, "w": torch.arange(3.0)}, {"rank": 0})
    saved.rename(saved.with_name(saved.name + ".old.tmp"))
    assert ckpt.latest_valid() is None
    ckpt.recover_renames()
    found = ckpt.latest_valid()
    assert found is not None and found.step == 1 and verify(found.path) is None

"""Resuming: a run killed with SIGKILL after a checkpoint continues to the very same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_utils import child_env, final_weights, metrics, steps_saved

from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")

SLEEP_EXTENSION = '''
import time

from torch import nn

from l3m.registry import register



@register("block")
class TestNap(nn.Module):
    """Identity that sleeps, so that a test can kill a run between two checkpoints."""

    outputs = ("x",)

    def __init__(self, seconds: float = 0.0):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        if self.seconds > 0:
            time.sleep(self.seconds)
        return x
'''


def _napping_program(llm, tmp_path, monkeypatch):
    (tmp_path / "napblock.py").write_text(SLEEP_EXTENSION)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = llm.read_text().replace("l3m 1\n", 'l3m 1\nextension "napblock"\nlet nap = 0.0\n', 1)
    text = text.replace("  head ", "  postprocessor { nap: TestNap(seconds = nap) x -> x }\n  head ", 1)
    # Stochastic depth makes the random state part of what must be restored.
    text = text.replace("causal = true)", "causal = true, drop_path = 0.1)")
    p = tmp_path / "nap.l3m"
    p.write_text(text)
    return p


def test_sigkill_then_resume_is_bit_exact(llm, tmp_path, monkeypatch):
    program = _napping_program(llm, tmp_path, monkeypatch)
    # Loader worker processes, and each step's global batch of 4 drawn as 2 micro-batches of 2.
    common = ["train.steps=8", "train.checkpoint_every=3", "train.keep=0", "train.log_every=1",
              "train.num_workers=2", "train.micro_batch=2"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train_main(str(program), common, output=str(full)) == 0

    code = ("import sys; from l3m.train.api import train_main; "
            f"sys.exit(train_main({str(program)!r}, {[*common, 'nap=0.25']!r}, output={str(killed)!r}))")
    env = child_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "ckpt" / "step_000003").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never wrote its first checkpoint"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the loader's workers too
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 3 in steps_saved(killed) and 8 not in steps_saved(killed)
    logged = [r["step"] for r in metrics(killed)]
    assert logged and max(logged) >= 3

    assert train_main(str(program), common, output=str(killed)) == 0  # resumes on its own
    a, b = final_weights(full), final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_losses = {r["step"]: r["loss"] for r in metrics(full)}
    resumed = metrics(killed)
    assert [r["step"] for r in resumed] == list(range(1, 9))  # lines past the checkpoint were dropped
    assert {r["step"]: r["loss"] for r in resumed} == full_losses


def test_resume_flag(llm, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=2"], output=str(run), resume=True) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert train_main(str(llm), ["train.steps=2"], output=str(run)) == 0
    # More steps: continues from step 2, following the new schedule.
    assert train_main(str(llm), ["train.steps=4"], output=str(run), resume=True) == 0
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    assert "schedule's settings changed" in capsys.readouterr().err
    # resume=False starts afresh and keeps the earlier checkpoints aside.
    assert train_main(str(llm), ["train.steps=1"], output=str(run), resume=False) == 0
    assert steps_saved(run) == [1]
    assert (run / "ckpt.prev" / "step_000004").is_dir()
    assert [r["step"] for r in metrics(run)] == [1]
    # Already at the end: nothing to do, still fine.
    assert train_main(str(llm), ["train.steps=1"], output=str(run)) == 0


def test_checkpoint_of_another_model_is_an_error_not_a_fresh_start(llm, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=1"], output=str(run)) == 0
    assert train_main(str(llm), ["train.steps=2", "dim=16"], output=str(run)) == 1
    assert "does not fit this program" in capsys.readouterr().err
    assert steps_saved(run) == [1]

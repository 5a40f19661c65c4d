"""`train.ema` survives SIGKILL: a run killed after step 5 and resumed from its step-4 checkpoint
ends with the weight averages (and weights) of a run that was never interrupted, bit for bit."""

from __future__ import annotations

import pytest
import torch
from fault_utils import l3m, write_program

from l3m.train.checkpoint import load_model_tensors

EMA = ("train.ema=0.9", "train.ema_start=2", "train.ema_device=cpu")


@pytest.mark.slow
def test_kill_and_resume_keeps_the_average(tmp_path):
    program = write_program(tmp_path)
    full = l3m("train", str(program), "--output", "full", *EMA, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    killed = l3m("train", str(program), "--output", "run", *EMA, cwd=tmp_path, L3M_FAULT="kill,step=5")
    assert killed.returncode == -9
    resumed = l3m("train", str(program), "--output", "run", *EMA, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "no weight average" not in resumed.stderr
    step6 = "ckpt/step_000006"
    for prefix in ("ema/", "model/"):
        a = load_model_tensors(tmp_path / "full" / step6, prefix=prefix)
        b = load_model_tensors(tmp_path / "run" / step6, prefix=prefix)
        assert a and a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (prefix, k)

"""`train.ema` under FSDP2 (2 processes, gloo, CPU): each rank averages its shard, the checkpoint
holds the averages resharded like the weights, and a resumed run continues them exactly."""

from __future__ import annotations

import shutil

import pytest
import torch
from dist_utils import run, write_program

from l3m.train.checkpoint import load_model_tensors

pytestmark = pytest.mark.dist

EMA = ["mesh.dp_shard=2", "train.checkpoint_every=1", "train.ema=0.5", "train.ema_start=3", "train.ema_device=cpu"]


def _train(program, out, nproc=2):
    proc = run(["-m", "l3m", "train", str(program), "--output", str(out), *EMA], nproc=nproc)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _at(out, step, prefix):
    return load_model_tensors(out / "ckpt" / f"step_{step:06d}", prefix=prefix)


def test_sharded_average_and_resume(tmp_path):
    program = write_program(tmp_path)
    full = tmp_path / "full"
    _train(program, full)
    w = {s: _at(full, s, "model/") for s in (2, 3, 4)}
    e = {s: _at(full, s, "ema/") for s in (2, 3, 4)}
    assert e[4] and set(e[4]) <= set(w[4])  # whole tensors: the shards of both ranks
    for name in e[4]:
        assert e[4][name].shape == w[4][name].shape, name
        assert torch.equal(e[2][name], w[2][name].float()), name  # before ema_start: the weights
        expect3 = 0.5 * w[2][name].float() + 0.5 * w[3][name].float()
        torch.testing.assert_close(e[3][name], expect3, rtol=0, atol=1e-6)
        torch.testing.assert_close(e[4][name], 0.5 * expect3 + 0.5 * w[4][name].float(), rtol=0, atol=1e-6)
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "ckpt" / "step_000002", resumed / "ckpt" / "step_000002")
    _train(program, resumed)
    got = _at(resumed, 4, "ema/")
    for name in e[4]:
        assert torch.equal(got[name], e[4][name]), name

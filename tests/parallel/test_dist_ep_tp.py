"""Experts split over tensor-parallel ranks and FSDP-sharded over `ep_dp` (gloo, CPU, under torchrun).

`mesh { tp = 2 }` trains the tiny AIMv2-MoE of `test_dist_ep` (a capacity MoE and a dropless one) like one
process: losses, balance losses and the checkpointed weights (whole from their hidden-unit shards). The MoE
alone under `tp = 2`, under `ep = 2 x tp = 2`, and a MoE language model on `mesh { dp_shard = 4, ep = 2 }`
with its experts FSDP-sharded over `ep_dp = 2` match one process (`ep_tp_worker.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_utils import ROOT, run
from test_dist_ep import PROGRAM, metrics

from l3m.train.checkpoint import load_model_tensors

pytestmark = pytest.mark.dist


def train(program: Path, out: Path, overrides: list[str], nproc: int) -> Path:
    proc = run(["-m", "l3m", "train", str(program), "--output", str(out), *overrides], nproc=nproc)
    assert proc.returncode == 0, f"{out.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


def test_expert_tensor_parallel_trains_like_one_process(tmp_path):
    program = tmp_path / "moe.l3m"
    program.write_text(PROGRAM.format(models=ROOT / "models"))
    one = train(program, tmp_path / "one", [], nproc=1)
    tp = train(program, tmp_path / "tp", ["mesh.tp=2"], nproc=2)
    ref, got = metrics(one), metrics(tp)
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4, 5]
    for step in ref:  # the balance losses: the tp ranks route the same tokens as one process
        for key in ("loss", "capacity", "dropless", "pixel", "text"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-7), (step, key)
    a = load_model_tensors(one / "ckpt" / "step_000005")
    b = load_model_tensors(tp / "ckpt" / "step_000005")
    assert a.keys() == b.keys() and any(k.endswith("mlp.w1") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_moe_split_over_tp_matches_one_process():
    proc = run(["tests/parallel/ep_tp_worker.py", "tp"], nproc=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK tp" in proc.stdout


@pytest.mark.slow
def test_experts_fsdp_over_ep_dp_and_ep_x_tp_on_four_ranks():
    proc = run(["tests/parallel/ep_tp_worker.py", "ep_fsdp"], nproc=4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK ep_fsdp" in proc.stdout

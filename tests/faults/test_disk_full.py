"""A disk that fills up while a checkpoint is written: one clear line, exit 1, the previous
checkpoint intact, and `--resume` continues from it."""

from __future__ import annotations

import errno
from traceback import StackSummary

import pytest
import torch
from fault_utils import l3m, write_program
from torch.distributed.checkpoint.api import CheckpointException

from l3m.train import checkpoint as ck
from l3m.train.checkpoint import CheckpointManager, verify
from l3m.train.logging import read_metrics


def test_disk_full_while_checkpointing(tmp_path):
    program = write_program(tmp_path)
    run = tmp_path / "run"
    proc = l3m("train", str(program), "--output", str(run), cwd=tmp_path, L3M_FAULT="enospc,checkpoint=4")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, proc.stderr
    assert "cannot write checkpoint step_000004: the disk is full" in errors[0]
    assert "step_000002 is intact" in errors[0]
    # only the earlier checkpoint is left, whole; the partial one is gone
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step_000002"]
    assert verify(run / "ckpt" / "step_000002") is None

    proc = l3m("train", str(program), "--output", str(run), "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "step_000002" in proc.stdout
    assert [f.step for f in CheckpointManager(run / "ckpt").complete()] == [6, 4, 2]
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_disk_full_inside_dcp_is_reported_alike(tmp_path, monkeypatch):
    """DCP wraps the OS error of its own writes in a CheckpointException: the same clear error."""
    manager = ck.CheckpointManager(tmp_path / "ckpt", keep=0, report=lambda t: None)
    state = {"step": 1, "model": {"w": torch.ones(3)}}
    manager.save(1, state, {"rank": 0})

    def full_disk(tensors, checkpoint_id, **kwargs):
        (ck.Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"\0" * 10)
        raise CheckpointException("write", {0: (OSError(errno.ENOSPC, "No space left on device"), StackSummary())})

    monkeypatch.setattr(ck.dcp, "save", full_disk)
    with pytest.raises(ck.CheckpointWriteError, match="cannot write checkpoint step_000002: the disk is full") as e:
        manager.save(2, {**state, "step": 2}, {"rank": 0})
    assert "step_000001 is intact" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000001"]
    assert verify(tmp_path / "ckpt" / "step_000001") is None

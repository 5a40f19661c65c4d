"""`log { tensorboard = true }`: event files with the scalars of `metrics.jsonl`, each step once,
also after a resume that recomputes steps an earlier process had logged."""

from __future__ import annotations

import math
import shutil

import pytest

pytest.importorskip("tensorboard")

from l3m.train.api import train_main  # noqa: E402
from l3m.train.logging import read_metrics  # noqa: E402
from l3m.train.tensorboard import read_scalars, scalars  # noqa: E402

pytestmark = pytest.mark.usefixtures("run_env")

ARGS = ["train.steps=6", "train.log_every=1", "train.eval_every=3", "train.eval_steps=1",
        "train.checkpoint_every=3", "train.keep=0", "log.tensorboard=true"]


def _same(a, b: float) -> bool:
    if a is None:  # JSON's null: a non-finite value
        return not math.isfinite(b)
    return math.isclose(float(a), b, rel_tol=1e-6, abs_tol=1e-12)


def assert_matches_jsonl(run) -> None:
    events = read_scalars(run / "tensorboard")  # raises when a tag holds a step twice
    records = read_metrics(run / "metrics.jsonl")
    expect: dict[str, dict[int, float]] = {}
    for r in records:
        for tag, value in scalars(r).items():
            expect.setdefault(tag, {})[r["step"]] = value
    assert set(events) == set(expect)
    for tag, by_step in expect.items():
        assert sorted(events[tag]) == sorted(by_step), tag
        for step, value in by_step.items():
            assert _same(value, events[tag][step]), (tag, step, value, events[tag][step])


def test_event_files_hold_the_jsonl_scalars(digits, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(digits), ARGS, output=str(run)) == 0
    events = read_scalars(run / "tensorboard")
    for tag in ("train/loss", "train/acc", "train/lr", "train/samples_per_s", "test/loss", "test/acc"):
        assert tag in events, sorted(events)
    assert sorted(events["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(events["test/acc"]) == [3, 6]
    assert_matches_jsonl(run)


def test_resume_logs_each_step_once(digits, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(digits), [*ARGS, "train.grad_clip=1.0"], output=str(run)) == 0
    assert "train/grad_norm" in read_scalars(run / "tensorboard")
    # As if killed after logging step 6 but before its checkpoint: steps 4-6 are trained again.
    shutil.rmtree(run / "ckpt" / "step_000006")
    before = read_scalars(run / "tensorboard")["train/loss"]
    assert train_main(str(digits), [*ARGS, "train.grad_clip=1.0"], output=str(run), resume=True) == 0
    after = read_scalars(run / "tensorboard")["train/loss"]
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    assert all(_same(before[s], after[s]) for s in after)  # a deterministic resume repeats the values
    assert_matches_jsonl(run)


def test_off_by_default(digits, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(digits), ["train.steps=2", "train.eval_every=0"], output=str(run)) == 0
    assert not (run / "tensorboard").exists()

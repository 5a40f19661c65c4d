"""`train.ema`: the weight average follows its formula, is checkpointed and resumed exactly, is
what evaluation uses with `train.eval_ema`, and is what `l3m export --ema` writes."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_utils import metrics

from l3m.dsl import compile_file
from l3m.train.api import export_main, run_eval, train_main
from l3m.train.checkpoint import CheckpointManager, load_model_tensors

pytestmark = pytest.mark.usefixtures("run_env")

COMMON = ["train.steps=3", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=1", "train.keep=0",
          "train.ema=0.5", "train.ema_start=2"]


def _ckpt(run, step):
    return next(f.path for f in CheckpointManager(run / "ckpt").complete() if f.step == step)


def _split(run, step):
    path = _ckpt(run, step)
    return load_model_tensors(path), load_model_tensors(path, prefix="ema/")


def test_average_matches_the_formula(digits, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(digits), COMMON, output=str(run)) == 0
    (w1, e1), (w2, e2), (w3, e3) = (_split(run, s) for s in (1, 2, 3))
    assert e1 and set(e1) <= set(w1)  # every trainable weight of the model has an average
    for name in e1:
        assert torch.equal(e1[name], w1[name].float()), name  # before ema_start: the weights
        expect2 = 0.5 * w1[name].float() + 0.5 * w2[name].float()
        torch.testing.assert_close(e2[name], expect2, rtol=0, atol=1e-6)
        torch.testing.assert_close(e3[name], 0.5 * expect2 + 0.5 * w3[name].float(), rtol=0, atol=1e-6)
    assert any(not torch.equal(e3[n], w3[n]) for n in e3)  # the average is not the weights


def test_resume_gives_the_same_average(digits, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train_main(str(digits), COMMON, output=str(full)) == 0
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "ckpt" / "step_000003")
    shutil.rmtree(resumed / "ckpt" / "step_000002")  # resume from step 1, before ema_start
    assert train_main(str(digits), COMMON, output=str(resumed), resume=True) == 0
    wa, ea = _split(full, 3)
    wb, eb = _split(resumed, 3)
    assert set(ea) == set(eb)
    for name in ea:
        assert torch.equal(ea[name], eb[name]), name
        assert torch.equal(wa[name], wb[name]), name


def test_eval_and_export_use_the_average(digits, tmp_path):
    run = tmp_path / "run"
    args = [*COMMON, "train.eval_steps=1"]
    assert train_main(str(digits), [*args, "train.eval_ema=true"], output=str(run)) == 0
    logged = metrics(run, "test")[-1]
    # `l3m eval` with eval_ema reads the averages from the checkpoint: the numbers logged in training
    _, with_ema = run_eval(str(digits), [*args, "train.eval_ema=true"], str(run))
    _, without = run_eval(str(digits), args, str(run))
    assert with_ema["test"]["loss"] == pytest.approx(logged["loss"], rel=1e-6)
    assert without["test"]["loss"] != pytest.approx(logged["loss"], rel=1e-6)
    # the exported averages, evaluated as plain weights, give the same numbers again
    out = tmp_path / "ema.safetensors"
    assert export_main(str(run), str(out), ema=True) == 0
    exported, averages = load_file(str(out)), load_model_tensors(_ckpt(run, 3), prefix="ema/")
    assert all(torch.equal(exported[n], averages[n]) for n in averages if n in exported)
    _, from_file = run_eval(str(digits), args, str(out))
    assert from_file["test"]["loss"] == pytest.approx(logged["loss"], rel=1e-6)


def test_lint_checks_the_settings(digits):
    bad = compile_file(str(digits), ["train.ema=1.5", "train.ema_start=-1", "train.ema_device=gpu"])
    messages = [d.message for d in bad.errors]
    assert any("train.ema" in m and "1.5" in m for m in messages), messages
    assert any("train.ema_start" in m for m in messages), messages
    assert any("ema_device" in m for m in messages), messages
    assert compile_file(str(digits), ["train.ema=0.999", "train.ema_device=cpu", "train.eval_ema=true"]).ok

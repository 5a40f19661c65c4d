"""The user's day, end to end, as typed: plan, train, eval, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT


def l3m(*args, env=None):
    e = dict(os.environ, WANDB_MODE="offline", NO_COLOR="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "l3m", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=e)


def test_plan_text_and_json():
    r = l3m("plan", "models/vit_imagenet.l3m", "--world-size", "8", "--format", "json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["params"]["total"] == p["params"]["trainable"] == 304_181_224
    assert p["memory_per_rank"]["params"] < 4 * 304_181_224  # sharded over 8 ranks
    r = l3m("plan", "models/llm.l3m")
    assert r.returncode == 0 and "1,439,895,552" in r.stdout


def test_train_eval_export_the_tiny_vit(tmp_path):
    run = tmp_path / "run"
    r = l3m("train", "examples/vit_digits.l3m", "--output", run, "train.steps=60", "train.eval_every=60",
            "train.checkpoint_every=30", "train.log_every=10", "log.wandb=disabled")
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in records if x["split"] == "train"]
    evals = [x for x in records if x["split"] == "eval"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert evals and evals[-1]["top1"] > 0.2  # chance is 0.1
    assert (run / "program.l3m").exists()

    r = l3m("eval", "examples/vit_digits.l3m", "--checkpoint", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top1" in r.stdout + r.stderr

    out = tmp_path / "vit.safetensors"
    r = l3m("export", run, out)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    weights = load_file(str(out))
    assert any(k.startswith("vit.trunk.blocks.") for k in weights)  # the names `plan` prints


def test_train_reports_compile_errors_without_a_traceback(tmp_path):
    r = l3m("train", "examples/vit_digits.l3m", "train.stpes=3")
    assert r.returncode == 1
    assert "error[E501]" in r.stderr and "did you mean 'train.steps'?" in r.stderr
    assert "Traceback" not in r.stderr

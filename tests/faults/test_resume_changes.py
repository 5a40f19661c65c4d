"""Resuming with another program: what changed is printed, applied (optimizer hyper-parameters,
schedule, steps) and recorded truthfully; structural changes are refused with one line naming
the setting; and a resume that fails leaves every file of the run directory as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fault_utils import l3m
from signal_utils import PROGRAM, steps_saved
from signal_utils import setup as setup_files

from l3m.dsl import compile_file
from l3m.train.api import train_main
from l3m.train.checkpoint import CheckpointManager, join_state, read_state
from l3m.train.engine import Trainer
from l3m.train.logging import RunLogger, read_metrics
from l3m.train.resume_changes import compare
from l3m.train.session import Runtime, build_session

# Hyper-parameters as lets, so that overrides change them; a constant schedule shows the base lr.
TEXT = (PROGRAM.replace("let dim = 16", "let dim = 16\nlet lr = 3e-3\nlet wd = 0.01\nlet beta2 = 0.999")
        .replace("AdamW(lr = 3e-3, weight_decay = 0.01)", "AdamW(lr = lr, weight_decay = wd, betas = [0.9, beta2])")
        .replace("WarmupCosine(warmup = 0.25)", "Constant()"))
FIRST = ["train.steps=4", "train.eval_every=0"]


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")
    monkeypatch.delenv("L3M_FAULT", raising=False)
    monkeypatch.chdir(tmp_path)
    program, _ = setup_files(tmp_path, TEXT)
    run = tmp_path / "run"
    assert train_main(str(program), FIRST, output=str(run)) == 0
    return program, run


def _digest(run: Path) -> dict[str, str]:
    """Every path under the run directory with the SHA-256 of each file's bytes."""
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(run.rglob("*"))}


def _groups(checkpoint: Path) -> list[dict]:
    return join_state(read_state(checkpoint)["state"]["optim"]["param_groups"], {})


def test_changed_hyper_parameters_are_applied_printed_and_recorded(env, capsys):
    program, run = env
    changed = [*FIRST[1:], "train.steps=8", "lr=1e-3", "wd=0.05", "beta2=0.95"]
    capsys.readouterr()
    assert train_main(str(program), changed, output=str(run)) == 0
    out = capsys.readouterr()
    said = out.out + out.err
    for text in ("optimizer.lr: 0.003 -> 0.001", "optimizer.weight_decay: 0.01 -> 0.05",
                 "optimizer.betas: [0.9, 0.999] -> [0.9, 0.95]", "train.steps: 4 -> 8"):
        assert text in said, said

    # in effect: the learning rate of steps 5.. and every group's settings in the last checkpoint
    lrs = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"}
    assert [lrs[s] for s in range(1, 5)] == [3e-3] * 4 and [lrs[s] for s in range(5, 9)] == [1e-3] * 4
    last = CheckpointManager(run / "ckpt").complete()[0]
    assert last.step == 8
    groups = _groups(last.path)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}  # 1-D parameters get none
    assert all(list(g["betas"]) == [0.9, 0.95] and g["initial_lr"] == 1e-3 for g in groups)

    # recorded: the resolved program as in effect, and the history of the change
    assert json.loads((run / "resolved.json").read_text())["optimizer"]["kwargs"]["lr"] == 1e-3
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["resumed_from"] and h["resumed_from"]["step"] for h in history] == [None, 4]
    lr_change = next(c for c in history[1]["changes"] if c["setting"] == "optimizer.lr")
    assert (lr_change["old"], lr_change["new"], lr_change["kind"]) == (3e-3, 1e-3, "applied")


def test_restore_puts_the_programs_settings_into_the_optimizer(env):
    """The trainer itself (no training): after `restore`, the program's lr/wd/betas are in every
    group, the schedule's base rates follow, and the moments come from the checkpoint."""
    program, run = env
    compiled = compile_file(str(program), ["lr=2e-3", "wd=0.1", "beta2=0.9"])
    session = build_session(compiled, Runtime(), command="train")
    try:
        trainer = Trainer(session, run, RunLogger.null(), CheckpointManager(run / "ckpt"))
        found = CheckpointManager(run / "ckpt").latest_valid()
        assert trainer.restore(found) == 4
        groups = session.optimizer.param_groups
        assert all(g["lr"] == 2e-3 and g["initial_lr"] == 2e-3 and g["betas"] == (0.9, 0.9) for g in groups)
        assert {g["weight_decay"] for g in groups} == {0.0, 0.1}
        assert session.scheduler.base_lrs == [2e-3] * len(groups)
        assert all(int(session.optimizer.state[p]["step"]) == 4 for g in groups for p in g["params"])
    finally:
        session.close()


def test_structural_change_is_refused_and_changes_nothing(env, tmp_path):
    program, run = env
    before = _digest(run)
    assert "l3m.lock" not in before
    # through the real CLI: exit 1, one line naming the setting
    proc = l3m("train", str(program), "--output", str(run), "train.steps=8", "train.seed=1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1, proc.stderr
    assert "train.seed: 0 -> 1 (data order)" in errors[0] and "--allow-changes" in errors[0]
    assert _digest(run) == before


def test_model_that_does_not_fit_changes_nothing(env, capsys):
    program, run = env
    (run / "ckpt" / "step_000009.tmp").mkdir()  # a partial write left by a killed run stays too
    before = _digest(run)
    assert train_main(str(program), ["train.steps=8", "dim=8"], output=str(run)) == 1
    err = capsys.readouterr().err
    assert "does not fit this program" in err and "gpt.trunk.blocks.dim: 16 -> 8" in err
    assert _digest(run) == before


def test_allow_changes_resumes_and_says_so(env, capsys):
    program, run = env
    assert train_main(str(program), ["train.steps=6", "train.seed=1"], output=str(run), allow_changes=True) == 0
    assert steps_saved(run) == [4, 6]
    history = json.loads((run / "run.json").read_text())["history"]
    assert history[-1]["allow_changes"] is True
    assert any(c["setting"] == "train.seed" and c["kind"] == "structural" for c in history[-1]["changes"])
    assert "train.seed: 0 -> 1" in capsys.readouterr().err


def test_compare_classifies_settings():
    base = {"nodes": [{"path": "gpt.trunk.blocks", "role": "block", "type": "T", "kwargs": {"dim": 16}},
                      {"path": "data.train", "role": "source", "type": "S", "kwargs": {"batch_size": 4}},
                      {"path": "data.val", "role": "source", "type": "S", "kwargs": {"batch_size": 4}}],
            "optimizer": {"type": "AdamW", "kwargs": {"lr": 1}}, "schedule": None,
            "sections": {"train": {"steps": 4, "seed": 0, "init_from": ""}, "mesh": {"tp": 1}, "log": {}}}
    new = json.loads(json.dumps(base))
    new["nodes"][0]["kwargs"]["dim"] = 8
    new["nodes"][1]["kwargs"]["batch_size"] = 8
    new["nodes"][2]["kwargs"]["batch_size"] = 8
    new["optimizer"]["kwargs"]["lr"] = 2
    new["sections"]["train"].update(steps=8, seed=1, init_from="w.safetensors")
    new["sections"]["mesh"]["tp"] = 2
    kinds = {c.setting: c.kind for c in compare(base, new)}
    assert kinds == {"gpt.trunk.blocks.dim": "model", "data.train.batch_size": "structural",
                     "data.val.batch_size": "applied", "optimizer.lr": "applied", "train.steps": "applied",
                     "train.seed": "structural", "train.init_from": "ignored", "mesh.tp": "applied"}
    new["optimizer"]["type"] = "SGD"
    assert {c.setting: c.kind for c in compare(base, new)}["optimizer"] == "structural"


def test_regrouped_optimizer_names_the_settings_that_regrouped_it():
    """weight_decay 0 -> 0.3 splits the parameters into decay / no-decay groups: the optimizer
    state no longer fits, and the error names the setting, not only the groups."""
    from l3m.train.resume_changes import Change, mismatch_message

    error = ValueError("checkpoint c does not fit this program: the optimizer's parameter groups changed")
    changes = [Change("optimizer.weight_decay", None, 0.3, "applied"), Change("train.steps", 5, 8, "applied")]
    text = mismatch_message(Path("c"), error, changes)
    assert "parameter groups changed" in text and "optimizer.weight_decay: none -> 0.3" in text
    assert "train.steps" not in text and "\n" not in text


def test_a_changed_bad_data_policy_is_reported():
    base = {"nodes": [], "optimizer": None, "schedule": None,
            "sections": {"train": {}, "mesh": {}, "log": {}, "data": {"on_error": "raise", "max_error_fraction": 0.01}}}
    new = json.loads(json.dumps(base))
    new["sections"]["data"]["on_error"] = "skip"
    assert [(c.setting, c.old, c.new, c.kind) for c in compare(base, new)] == [
        ("data.on_error", "raise", "skip", "applied")]

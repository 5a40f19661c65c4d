"""Atomic, verified checkpoints: the state split, markers, damage, fallback and pruning."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from train_utils import final_weights, steps_saved

from l3m.train.api import train_main
from l3m.train.checkpoint import (
    MARKER,
    CheckpointManager,
    join_state,
    resolve_checkpoint,
    split_state,
    tensor_keys,
    verify,
)

pytestmark = pytest.mark.usefixtures("run_env")


def test_split_and_join_round_trip():
    state = {"model": {"a.weight": torch.ones(2)}, "optim": {"param_groups": [{"betas": (0.9, 0.95), "lr": 1e-3,
             "params": ["a.weight"]}], "state": {"a.weight": {"step": torch.tensor(3.0)}}}, "ids": {1: "x"},
             "step": 7, "none": None, "inf": float("inf")}
    skeleton, tensors = split_state(state)
    assert set(tensors) == {"model/a.weight", "optim/state/a.weight/step"}
    assert sorted(tensor_keys(skeleton)) == sorted(tensors)
    back = join_state(json.loads(json.dumps(skeleton)), tensors)
    assert back["optim"]["param_groups"][0]["betas"] == (0.9, 0.95)  # tuples survive JSON
    assert back["ids"] == {1: "x"} and back["step"] == 7 and back["inf"] == float("inf")
    assert back["model"]["a.weight"] is tensors["model/a.weight"]
    with pytest.raises(TypeError, match="cannot checkpoint object"):
        split_state({"x": object()})


def _run(llm, out, *overrides):
    return train_main(str(llm), ["train.checkpoint_every=2", "train.keep=0", "train.log_every=2", *overrides],
                      output=str(out))


def test_damaged_and_partial_checkpoints_are_skipped(llm, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(llm, run, "train.steps=8") == 0
    assert steps_saved(run) == [2, 4, 6, 8]
    undisturbed = final_weights(run)
    ckpt = run / "ckpt"
    shutil.rmtree(ckpt / "step_000008")
    # A run killed while saving: a .tmp directory, and a step directory that never got its marker.
    (ckpt / "step_000008.tmp").mkdir()
    (ckpt / "step_000010").mkdir()
    (ckpt / "step_000010" / "state.json").write_text("{}")
    # Bit rot in the newest complete one.
    data = next((ckpt / "step_000006").glob("*.distcp"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert "checksum" in verify(ckpt / "step_000006")

    reports: list[str] = []
    found = CheckpointManager(ckpt, report=reports.append).latest_valid()
    assert found.step == 4
    assert any("step_000010" in r and "incomplete" in r for r in reports)
    assert any("step_000006" in r and "damaged" in r for r in reports)

    # Resuming goes on from step 4 and ends exactly where the undisturbed run ended.
    capsys.readouterr()
    assert _run(llm, run, "train.steps=8") == 0
    out = capsys.readouterr()
    assert "resumed from" in out.out and "step_000004" in out.out
    assert "step_000006 is damaged" in out.err
    assert not (ckpt / "step_000008.tmp").exists()
    assert (ckpt / "step_000010.skipped").is_dir()  # kept for inspection, no longer a checkpoint
    assert steps_saved(run) == [2, 4, 6, 8]  # 6 was recomputed and written afresh
    resumed = final_weights(run)
    assert all(torch.equal(resumed[k], undisturbed[k]) for k in undisturbed)


def test_missing_marker_and_missing_file_are_detected(llm, tmp_path):
    run = tmp_path / "run"
    assert _run(llm, run, "train.steps=4") == 0
    s2, s4 = run / "ckpt" / "step_000002", run / "ckpt" / "step_000004"
    (s4 / MARKER).unlink()
    assert "no COMPLETE marker" in verify(s4)
    assert CheckpointManager(run / "ckpt").latest_valid().step == 2
    (s2 / "rank_0.json").unlink()
    assert "missing" in verify(s2)
    assert CheckpointManager(run / "ckpt").latest_valid() is None
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(run)
    with pytest.raises(ValueError, match="cannot be used"):
        resolve_checkpoint(s2)


def test_keep_prunes_old_checkpoints(llm, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=5", "train.checkpoint_every=1", "train.keep=2"],
                      output=str(run)) == 0
    assert steps_saved(run) == [4, 5]
    assert not list((run / "ckpt").glob("*.tmp"))
    assert resolve_checkpoint(run).name == "step_000005"
    assert resolve_checkpoint(run / "ckpt" / "step_000004").name == "step_000004"


def test_checkpoint_contents(llm, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=2"], output=str(run)) == 0
    path = run / "ckpt" / "step_000002"
    saved = json.loads((path / "state.json").read_text())
    state = saved["state"]
    assert saved["step"] == 2 and state["step"] == 2
    assert state["loader"]["batch"] == 2 and state["loader"]["epoch"] == 0
    assert state["schedule"]["last_epoch"] == 2
    keys = tensor_keys(state)
    assert "model/gpt.trunk.blocks.layers.0.attn.qkv.weight" in keys  # parameter names are the paths `plan` prints
    assert not any(".block." in k for k in keys)
    assert any(k.startswith("optim/state/model.") and k.endswith("/exp_avg") for k in keys)
    rng = json.loads((path / "rank_0.json").read_text())["rng"]
    assert set(rng) >= {"python", "numpy", "torch"}
    manifest = json.loads((path / MARKER).read_text())
    assert set(manifest["files"]) >= {"state.json", "rank_0.json", ".metadata"}

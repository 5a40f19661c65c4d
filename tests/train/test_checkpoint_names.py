"""One name per thing in runs: checkpoints, exports and `init_from` use the names `plan` prints
(`vit.trunk.blocks...`); files written before names carried the model's name are refused with the fix."""

from __future__ import annotations

import re

import pytest
import torch
from train_utils import final_weights

from l3m.train.api import eval_main, export_main, train_main

pytestmark = pytest.mark.usefixtures("run_env")

FAST = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=1"]


def old_names(monkeypatch):
    """Build models as l3m did before: parameter names without the model's name (`trunk.blocks...`)."""
    import l3m.model.build as build

    monkeypatch.setattr(build, "module_path", lambda node: node.path.split(".", 1)[1])


@pytest.fixture
def run(digits, tmp_path):
    out = tmp_path / "run"
    assert train_main(str(digits), FAST, output=str(out)) == 0
    return out


def test_checkpoints_and_exports_hold_the_plan_paths(digits, run, tmp_path):
    from safetensors.torch import load_file

    names = set(final_weights(run))
    assert "vit.trunk.blocks.layers.0.norm1.weight" in names and all(n.startswith("vit.") for n in names)
    out = tmp_path / "w.safetensors"
    assert export_main(str(run), str(out)) == 0
    assert set(load_file(str(out))) == names


def test_a_checkpoint_round_trips_through_resume_and_init_from(digits, run, tmp_path, capsys):
    more = [*FAST[1:], "train.steps=3"]
    assert train_main(str(digits), more, output=str(run), resume=True) == 0  # resume: the same names fit
    assert eval_main(str(digits), [], str(run)) == 0
    out = tmp_path / "w.safetensors"
    assert export_main(str(run), str(out)) == 0
    capsys.readouterr()
    ft = tmp_path / "ft"
    ov = [*FAST[1:], "train.steps=1", f"train.init_from={out}", 'train.init_exclude=["vit.head.*"]', "optimizer.lr=0.0"]
    assert train_main(str(digits), ov, output=str(ft)) == 0
    assert "missing: vit.head.cls.fc.weight" in capsys.readouterr().out
    before, after = final_weights(run), final_weights(ft)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vit.trunk."))


def test_old_weights_are_refused_with_the_prefix_to_add(digits, tmp_path, monkeypatch, capsys):
    old_run, old_file = tmp_path / "old", tmp_path / "old.safetensors"
    with monkeypatch.context() as m:
        old_names(m)
        assert train_main(str(digits), FAST, output=str(old_run)) == 0
    assert export_main(str(old_run), str(old_file)) == 0
    assert "trunk.blocks.layers.0.norm1.weight" in final_weights(old_run)  # written the old way
    capsys.readouterr()

    # init_from: an error naming the prefix and the setting that adds it ...
    assert train_main(str(digits), [*FAST, f"train.init_from={old_file}"], output=str(tmp_path / "a")) == 1
    err = capsys.readouterr().err
    print(err)
    assert "lack the prefix 'vit.'" in err and re.search(r"'(\S+)' is 'vit\.\1' now", err), err
    assert 'train.init_rename = ["=vit."]' in err
    # ... which loads it.
    assert train_main(str(digits), [*FAST, f"train.init_from={old_file}", 'train.init_rename=["=vit."]'],
                      output=str(tmp_path / "b")) == 0
    # Resuming or evaluating an old checkpoint: refused, with the same explanation.
    assert train_main(str(digits), [*FAST[1:], "train.steps=3"], output=str(old_run), resume=True) == 1
    assert "lack the prefix 'vit.'" in capsys.readouterr().err
    assert eval_main(str(digits), [], str(old_run / "ckpt")) == 1
    assert "lack the prefix 'vit.'" in capsys.readouterr().err

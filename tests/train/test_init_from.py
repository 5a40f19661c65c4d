"""`train.init_from`: start a new run from pretrained weights (fine-tuning, probing)."""

from __future__ import annotations

import pytest
import torch
from train_utils import final_weights

from l3m.train.api import export_main, train_main

pytestmark = pytest.mark.usefixtures("run_env")


@pytest.fixture
def pretrained(digits, tmp_path):
    run = tmp_path / "pre"
    assert train_main(str(digits), ["train.steps=5"], output=str(run)) == 0
    out = tmp_path / "pre.safetensors"
    assert export_main(str(run), str(out)) == 0
    return out


def test_fine_tune_from_pretrained_trunk(digits, pretrained, tmp_path, capsys):
    from safetensors.torch import load_file

    run = tmp_path / "ft"
    overrides = ["train.steps=1", f"train.init_from={pretrained}", 'train.init_exclude=["vit.head.*"]',
                 "train.checkpoint_every=1", "optimizer.lr=0.0"]
    assert train_main(str(digits), overrides, output=str(run)) == 0
    out = capsys.readouterr().out
    assert f"initialised from {pretrained}" in out and "missing: vit.head.cls" in out
    before, after = load_file(str(pretrained)), final_weights(run)
    trunk = [k for k in before if k.startswith("vit.trunk.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # lr 0: exactly the loaded weights
    assert not torch.equal(before["vit.head.cls.fc.weight"], after["vit.head.cls.fc.weight"])


def test_weights_that_do_not_fit_are_an_error(digits, pretrained, tmp_path, capsys):
    run = tmp_path / "bad"
    code = train_main(str(digits), ["train.steps=1", f"train.init_from={pretrained}",
                                    'train.init_rename=["vit.trunk.=backbone."]'], output=str(run))
    assert code == 1
    assert "does not fit the model" in capsys.readouterr().err

"""The fine-tuning recipe end to end: pretrain, fine-tune with LoRA from that run (`train.init_from`), export
LoRA merged into the weights, and load the result into the plain program."""

from __future__ import annotations

import pytest
import torch
from programs import ADAPTER, LORA, vit

import l3m
from l3m.cli import main
from l3m.model.build import materialize
from l3m.train.api import export_main, train_main
from l3m.train.export import load_pretrained, read_weights

pytestmark = pytest.mark.usefixtures("run_env")


@pytest.fixture
def pretrained(tmp_path):
    run = tmp_path / "pre"
    assert train_main(str(vit(tmp_path, "pre")), [], output=str(run)) == 0
    out = tmp_path / "pre.safetensors"
    assert export_main(str(run), str(out)) == 0
    return out


def _model(path, state):
    model = materialize(l3m.load(str(path)).build_model())
    load_pretrained(model, state, strict=True)
    return model.eval()


def _logits(model, images):
    with torch.no_grad():
        return model({"image": images})["logits"]


def test_lora_fine_tune_changes_only_lora_and_exports_a_plain_model(tmp_path, pretrained):
    program = vit(tmp_path, "ft", LORA, f', init_from = "{pretrained}"')
    run = tmp_path / "ft"
    assert train_main(str(program), [], output=str(run)) == 0
    before, after = read_weights(pretrained), read_weights(run)
    lora = [k for k in after if k.endswith((".lora_A", ".lora_B"))]
    assert len(lora) == 8 and set(after) == set(before) | set(lora)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base is exactly the pretrained one
    assert all(after[k].abs().max() > 0 for k in lora if k.endswith("lora_B"))  # B left zero: it trained

    merged = tmp_path / "merged.safetensors"
    assert main(["export", str(run), str(merged)]) == 0
    plain_weights = read_weights(merged)
    assert set(plain_weights) == set(before)  # no LoRA tensors: the plain program's names
    images = torch.randn(8, 3, 8, 8)
    tuned = _logits(_model(program, after), images)
    plain = _logits(_model(vit(tmp_path, "plain"), plain_weights), images)
    assert (tuned - plain).abs().max() < 1e-5
    assert (tuned - _logits(_model(vit(tmp_path, "plain"), before), images)).abs().max() > 1e-4

    only = tmp_path / "lora.safetensors"
    assert main(["export", str(run), str(only), "--adapters-only"]) == 0
    assert sorted(read_weights(only)) == sorted(lora)


def test_adapters_only_refuses_a_model_without_adapters(tmp_path, pretrained, capsys):
    assert main(["export", str(tmp_path / "pre"), str(tmp_path / "x.safetensors"), "--adapters-only"]) == 1
    assert "no adapters" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "pre"), str(tmp_path / "x"), "--adapters-only", "--format", "hf"]) == 2


def test_adapter_fine_tune_resumes_exactly(tmp_path, pretrained, capsys):
    program = vit(tmp_path, "ad", ADAPTER, f', init_from = "{pretrained}", checkpoint_every = 2')
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert train_main(str(program), ["train.steps=4"], output=str(straight)) == 0
    assert train_main(str(program), ["train.steps=2"], output=str(halves)) == 0
    capsys.readouterr()
    assert train_main(str(program), ["train.steps=4"], output=str(halves)) == 0
    assert "resumed from" in capsys.readouterr().out
    a, b = read_weights(straight), read_weights(halves)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    base = read_weights(pretrained)
    assert all(torch.equal(base[k], a[k]) for k in base)  # only the adapters trained


def test_init_from_a_base_and_its_adapters_rebuilds_the_fine_tuned_model(tmp_path, pretrained):
    program = vit(tmp_path, "ft", LORA, f', init_from = "{pretrained}"')
    run = tmp_path / "ft"
    assert train_main(str(program), [], output=str(run)) == 0
    only = tmp_path / "lora.safetensors"
    assert main(["export", str(run), str(only), "--adapters-only"]) == 0
    # A new run of the LoRA program from [base, adapters]: one step at lr 0, so its weights are what it loaded.
    again = vit(tmp_path, "again", LORA, f', init_from = ["{pretrained}", "{only}"]')
    assert l3m.load(str(again)).ok
    rerun = tmp_path / "again"
    assert train_main(str(again), ["train.steps=1", "optimizer.lr=0.0"], output=str(rerun)) == 0
    tuned, loaded = read_weights(run), read_weights(rerun)
    assert set(tuned) == set(loaded) and all(torch.equal(tuned[k], loaded[k]) for k in tuned)

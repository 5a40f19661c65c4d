"""Safetensors export of a checkpoint and pretrained loading with filters and renames."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_utils import final_weights

from l3m.dsl import compile_file
from l3m.model.build import build_model, materialize
from l3m.train.api import eval_main, export_main, run_eval, train_main
from l3m.train.export import load_pretrained, read_weights, select_and_rename

pytestmark = pytest.mark.usefixtures("run_env")



def _fresh_model(program_path):
    compiled = compile_file(str(program_path))
    compiled.raise_errors()
    torch.manual_seed(123)
    return materialize(build_model(compiled.program, schedule=compiled.flow.model_order()), "cpu")


@pytest.fixture
def trained(llm, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=3"], output=str(run)) == 0
    return run


def test_export_round_trip(llm, trained, tmp_path):
    out = tmp_path / "out" / "model.safetensors"
    assert export_main(str(trained), str(out)) == 0
    exported = load_file(str(out))
    weights = final_weights(trained)
    assert exported.keys() == weights.keys()
    assert all(torch.equal(exported[k], weights[k]) for k in weights)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["step"] == "3"
    model = _fresh_model(llm)
    assert exported.keys() == model.state_dict().keys()
    report = load_pretrained(model, out)
    assert report.ok and len(report.loaded) == len(exported)
    assert all(torch.equal(model.state_dict()[k], exported[k]) for k in exported)
    # The exported file evaluates exactly like the checkpoint it came from.
    _, from_ckpt = run_eval(str(llm), [], str(trained))
    _, from_file = run_eval(str(llm), [], str(out))
    assert from_file == from_ckpt
    assert eval_main(str(llm), [], str(out)) == 0


def test_export_errors(trained, tmp_path):
    assert export_main(str(tmp_path / "nothing"), str(tmp_path / "x.safetensors")) == 2
    step = trained / "ckpt" / "step_000003"
    (step / "state.json").write_text("{}")
    assert export_main(str(step), str(tmp_path / "x.safetensors")) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_filters_and_renames(llm, trained, tmp_path):
    weights = final_weights(trained)
    # A foreign checkpoint: other prefixes, a head we do not want, inside a torch file.
    foreign = {k.replace("gpt.trunk.", "encoder.", 1): v for k, v in weights.items()}
    foreign["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "foreign.pt"
    torch.save({"model": foreign}, path)
    assert read_weights(path).keys() == foreign.keys()

    model = _fresh_model(llm)
    with pytest.raises(ValueError, match="unexpected: extra.head.weight"):
        load_pretrained(model, path, rename={"encoder.": "gpt.trunk."})
    report = load_pretrained(model, path, rename={"encoder.": "gpt.trunk."}, exclude=["extra.*"])
    assert report.ok
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)

    fresh = _fresh_model(llm)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    report = load_pretrained(fresh, path, include=["encoder.*"], rename={"encoder.": "gpt.trunk."}, strict=False)
    assert report.loaded and all(k.startswith("gpt.trunk.") for k in report.loaded)
    assert report.missing and all(not k.startswith("gpt.trunk.") for k in report.missing)
    assert all(torch.equal(fresh.state_dict()[k], before[k]) for k in report.missing)

    wrong = dict(weights)
    key = next(iter(wrong))
    wrong[key] = torch.zeros(1)
    with pytest.raises(ValueError, match="wrong shape"):
        load_pretrained(_fresh_model(llm), wrong)
    with pytest.raises(ValueError, match="renamed to"):
        select_and_rename({"a.x": torch.ones(1), "b.x": torch.ones(1)}, rename={"a.": "", "b.": ""})


def test_torch_files_are_read_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights only|unsupported|global"):
        read_weights(path)

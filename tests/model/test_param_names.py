"""Parameter names start with the path `plan` prints for their block (`vit.trunk.blocks`)."""

from __future__ import annotations

import fnmatch

import pytest
import torch
from helpers import ROOT

import l3m
from l3m.model.build import materialize
from l3m.plan import plan
from l3m.train.export import load_pretrained


@pytest.mark.parametrize("example", ["vit_digits", "clip_digits"])
def test_every_parameter_name_starts_with_a_plan_path(example):
    compiled = l3m.load(str(ROOT / "examples" / f"{example}.l3m"))
    model = compiled.build_model()
    blocks = plan(compiled.program)["params"]["by_block"]  # the paths `l3m plan` prints
    names = [n for n, _ in model.named_parameters()]
    assert names and all(any(n.startswith(p + ".") for p in blocks) for n in names)
    root = compiled.program.models[0].path
    assert all(n.startswith(root + ".") for n in names)
    counted = {p: sum(t.numel() for n, t in model.named_parameters() if n.startswith(p + ".")) for p in blocks}
    assert counted == blocks  # each block's parameters, found by its path (no ties in these examples)


def test_shipped_no_decay_globs_still_match_what_they_meant():
    model = l3m.load(str(ROOT / "examples" / "vit_digits.l3m")).build_model()
    names = [n for n, _ in model.named_parameters()]
    for glob in ["*bias", "*norm*", "*pos*", "*cls*"]:
        hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        assert hits and all(glob.strip("*") in n.removeprefix("vit.") for n in hits), glob


def test_a_freeze_glob_takes_the_plan_path_and_the_old_one_is_e640(tmp_path):
    compiled = l3m.load(str(ROOT / "examples" / "vit_digits.l3m"), ['train.freeze=["vit.preprocessor.*"]'])
    frozen = {n for n, p in compiled.build_model().named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("vit.preprocessor.") for n in frozen)
    from l3m.dsl.diagnostics import CompileError
    from l3m.model.blame import ProgramError

    with pytest.raises((CompileError, ProgramError)) as e:  # at lint when names are known statically
        l3m.load(str(ROOT / "examples" / "vit_digits.l3m"), ['train.freeze=["preprocessor.*"]']).build_model()
    diags = getattr(e.value, "diagnostics", None) or [e.value.diagnostic]
    assert any(d.code == "E640" and "'vit." in (d.help or "") for d in diags)


def test_old_names_do_not_load_and_say_which_prefix_is_missing():
    model = materialize(l3m.load(str(ROOT / "examples" / "vit_digits.l3m")).build_model(), "cpu")
    state = model.state_dict()
    old = {k.removeprefix("vit."): v.clone() for k, v in state.items()}
    with pytest.raises(ValueError, match=r"lack the prefix 'vit\.'.*train\.init_rename = \[\"=vit\.\"\]"):
        load_pretrained(model, old)
    report = load_pretrained(model, old, rename={"": "vit."})  # what init_rename = ["=vit."] does
    assert report.ok and all(torch.equal(state[k], model.state_dict()[k]) for k in state)
    assert not load_pretrained(model, {"x.y": torch.zeros(1)}, strict=False).hint  # unrelated: no such hint

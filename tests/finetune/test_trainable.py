"""A model with adapters trains only them (and `train.trainable`); frozen parameters get no optimizer state."""

from __future__ import annotations

import pytest
import torch
from programs import ADAPTER, LORA, vit

import l3m
from l3m.dsl import compile_file
from l3m.model.blocks.peft import Adapter, LoraLinear
from l3m.model.build import materialize
from l3m.train.optim import AdamW


def _trainable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_lora_freezes_the_base(tmp_path):
    model = l3m.load(str(vit(tmp_path, "lora", LORA))).build_model()
    names = _trainable(model)
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)
    assert len(names) == 2 * 2 * 2  # 2 layers x (qkv, proj) x (A, B)
    assert sum(isinstance(m, LoraLinear) for m in model.modules()) == 4


def test_trainable_globs_keep_a_head_training(tmp_path):
    model = l3m.load(str(vit(tmp_path, "lora_head", LORA, ', trainable = ["vit.head.*"]'))).build_model()
    names = _trainable(model)
    assert "vit.head.cls.fc.weight" in names and "vit.trunk.blocks.layers.0.attn.qkv.weight" not in names


def test_adapters_freeze_the_base(tmp_path):
    model = l3m.load(str(vit(tmp_path, "adapter", ADAPTER))).build_model()
    names = _trainable(model)
    assert len(names) == 2 * 2 * 4  # 2 layers x (adapter_1, adapter_2) x (down, up) x (weight, bias)
    assert all(".adapter_1." in n or ".adapter_2." in n for n in names)
    assert sum(isinstance(m, Adapter) for m in model.modules()) == 4


def test_trainable_alone_is_a_probe_and_nothing_changes_without_either(tmp_path):
    probe = l3m.load(str(vit(tmp_path, "probe", train=', trainable = ["vit.head.*"]'))).build_model()
    assert all(n.startswith("vit.head.") for n in _trainable(probe))
    plain = l3m.load(str(vit(tmp_path, "plain"))).build_model()
    assert _trainable(plain) == [n for n, _ in plain.named_parameters()]


def test_a_trainable_glob_that_matches_nothing_is_a_lint_error(tmp_path):
    compiled = compile_file(str(vit(tmp_path, "typo", LORA, ', trainable = ["vit.haed.*"]')))
    assert any("train.trainable" in d.message and "vit.haed.*" in d.message for d in compiled.errors)


def test_frozen_parameters_get_no_optimizer_state(tmp_path):
    model = materialize(l3m.load(str(vit(tmp_path, "opt", LORA))).build_model())
    opt = AdamW(list(model.named_parameters()), lr=1e-2)
    x = torch.randn(4, 3, 8, 8)
    model({"image": x})["logits"].sum().backward()
    opt.step()
    stated = {id(p) for p in opt.state}
    for name, p in model.named_parameters():
        assert (id(p) in stated) == name.endswith(("lora_A", "lora_B")), name
        assert (p.grad is not None) == p.requires_grad, name


@pytest.mark.parametrize("extra", [LORA, ADAPTER])
def test_lint_and_plan_know_the_parts(tmp_path, extra, capsys):
    from l3m.cli import main

    path = vit(tmp_path, "plan", extra)
    assert main(["lint", str(path)]) == 0
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    model = l3m.load(str(path)).build_model()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"{total:,}" in out and f"trainable {trainable:,}" in out

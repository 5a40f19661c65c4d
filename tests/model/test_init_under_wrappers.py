"""Wrappers that forward attribute lookups (activation checkpointing's, torch.compile's) do not make a
module initialise twice: every activation-checkpointing mode starts from the same weights as none."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT

import l3m
from l3m.model.build import materialize


def _initial(overrides: list[str]) -> dict[str, torch.Tensor]:
    from l3m.dist.ac import apply_ac

    compiled = l3m.load(str(ROOT / "examples" / "aimv2_moe_digits.l3m"), overrides)
    model = compiled.build_model(device="meta")
    apply_ac(model, overrides[0].split("=")[1])
    torch.manual_seed(0)
    materialize(model, "cpu")
    return {k.replace("._checkpoint_wrapped_module", ""): v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["mlp", "full", "selective"])
def test_activation_checkpointing_starts_from_the_same_weights(mode):
    plain = _initial(["train.activation_checkpointing=none"])
    wrapped = _initial([f"train.activation_checkpointing={mode}"])
    assert wrapped.keys() == plain.keys()
    differ = [k for k in plain if not torch.equal(plain[k], wrapped[k])]
    assert not differ, differ  # the MoE's init_weights was reached through the wrapper too

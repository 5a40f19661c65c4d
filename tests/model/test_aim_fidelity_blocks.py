"""The block options that reproduce ml-l3m's AIM systems: its head init ("fan_in_depth_scaled"), torch's
default Linear init ("pytorch"), and the MLP-only layers that keep an identity attention branch."""

from __future__ import annotations

import math

import pytest
import torch

from l3m.registry import lookup


def test_fan_in_depth_scaled_is_timm_variance_scaling():
    # variance 1 / ((1 + depth) * fan_in), cut at 2 of the untruncated stds (std / 0.8796).
    torch.manual_seed(0)
    lin = lookup("Linear").obj(512, 256, bias=True, init="fan_in_depth_scaled", init_depth=12)
    w, std = lin.weight.detach(), math.sqrt(1 / (13 * 512))
    assert abs(w.std().item() / std - 1) < 0.02
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-7
    assert w.abs().max().item() > 1.9 * std / 0.87962566103423978
    assert lin.bias.abs().max() == 0


def test_pytorch_init_is_nn_linear_default():
    torch.manual_seed(0)
    lin = lookup("Linear").obj(400, 300, bias=True, init="pytorch")
    bound = 1 / math.sqrt(400)
    for t in (lin.weight, lin.bias):
        assert t.abs().max().item() <= bound
        assert t.abs().max().item() > 0.95 * bound
    assert abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound


def test_lmhead_init_depth_reaches_its_projection():
    torch.manual_seed(0)
    head = lookup("LMHead").obj(256, 1000, init="fan_in_depth_scaled", init_depth=3)
    assert abs(head.weight.std().item() / math.sqrt(1 / (4 * 256)) - 1) < 0.02


def test_identity_attention_keeps_norm_and_residual():
    torch.manual_seed(0)
    t = lookup("Transformer").obj(dim=8, depth=2, heads=1, attention=False, identity_attn=True, mlp="gelu",
                                  hidden=16, norm="layernorm")
    plain = lookup("Transformer").obj(dim=8, depth=2, heads=1, attention=False, mlp="gelu", hidden=16,
                                      norm="layernorm")
    assert sum(p.numel() for p in t.parameters()) == sum(p.numel() for p in plain.parameters()) + 2 * 2 * 8
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    x = torch.randn(2, 5, 8)
    y = x
    for layer in t.layers:  # y + norm1(y), then y + mlp(norm2(y))
        y = y + layer.norm1(y)
        y = y + layer.mlp(layer.norm2(y))
    torch.testing.assert_close(t(x)[0], t.norm(y))
    with pytest.raises(ValueError, match="attention=false"):
        lookup("Transformer").obj(dim=8, depth=1, heads=1, identity_attn=True)

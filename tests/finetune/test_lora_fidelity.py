"""l3m's LoRA attention computes what ml-l3m's `LoraAttention` (loralib's MergedLinear on a fused qkv, and
loralib's Linear on the output projection) computes for the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l3m.model.blocks.attention import Attention
from l3m.model.blocks.peft import Lora, LoraLinear
from l3m.model.components import Factory
from l3m.model.init import init_model

DIM, HEADS, RANK, ALPHA = 24, 3, 4, 2.0


def merged_linear(x, weight, bias, lora_a, lora_b, enable, rank, alpha):
    """loralib's MergedLinear forward (unmerged): the output is len(enable) equal parts; the enabled ones get
    B_i A_i, computed as loralib does, by a grouped 1-d convolution of the stacked A by the stacked B."""
    out = F.linear(x, weight, bias)
    groups = sum(enable)
    delta = F.conv1d(lora_a.unsqueeze(0), lora_b.unsqueeze(-1), groups=groups).squeeze(0)  # [rows, in]
    rows = torch.zeros(len(enable), weight.shape[0] // len(enable), dtype=torch.bool)
    rows[torch.tensor(enable)] = True
    full = weight.new_zeros(weight.shape)
    full[rows.flatten()] = delta
    return out + x @ full.T * (alpha / rank)


def lora_linear(x, weight, bias, lora_a, lora_b, rank, alpha):
    """loralib's Linear: `W x + b + (alpha / r) B A x`."""
    return F.linear(x, weight, bias) + (x @ lora_a.T @ lora_b.T) * (alpha / rank)


def reference_attention(x, l3m: Attention, enable, proj_lora: bool):
    """ml-l3m's LoraAttention on l3m's weights: its fused qkv is [q; k; v] (each heads x head_dim) where
    l3m's holds [q_h, k_h, v_h] per head, so the base weight is reordered; A and B are loralib's as they are."""
    hd = DIM // HEADS
    w = l3m.qkv.weight.view(HEADS, 3, hd, DIM).transpose(0, 1).reshape(3 * DIM, DIM)
    qkv = merged_linear(x, w, None, l3m.qkv.lora_A, l3m.qkv.lora_B, enable, RANK, ALPHA)
    q, k, v = qkv.view(*x.shape[:2], 3, HEADS, hd).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    if proj_lora:
        return lora_linear(o, l3m.proj.weight, None, l3m.proj.lora_A, l3m.proj.lora_B, RANK, ALPHA)
    return F.linear(o, l3m.proj.weight)


def _attention(**lora) -> Attention:
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, lora=Factory("Lora", Lora, {"rank": RANK, "alpha": ALPHA, **lora}))
    init_model(attn)
    with torch.no_grad():  # a trained LoRA: B is no longer zero
        for m in attn.modules():
            if isinstance(m, LoraLinear):
                m.lora_B.normal_(std=0.5)
    return attn


@pytest.mark.parametrize(("flags", "enable", "proj"), [
    ({}, [True, True, True], True),  # Lora(rank) = LoraAttention(lora_rank) with its default qkv_flags
    ({"k": False, "proj": False}, [True, False, True], False),  # qkv_flags = (True, False, True)
])
def test_lora_attention_matches_loralib_semantics(flags, enable, proj):
    attn = _attention(**flags)
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        got, want = attn(x), reference_attention(x, attn, enable, proj)
        plain = Attention(DIM, HEADS)
        plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "lora" not in k})
        assert (plain(x) - got).abs().max() > 1e-3  # the update matters
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lora_tensors_are_shaped_and_initialised_as_loralib():
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, lora=Factory("Lora", Lora, {"rank": RANK}))
    init_model(attn)
    assert attn.qkv.lora_A.shape == (3 * RANK, DIM) and attn.qkv.lora_B.shape == (3 * DIM, RANK)
    assert attn.qkv.scaling == 1.0 / RANK  # lora_alpha defaults to 1
    assert torch.count_nonzero(attn.qkv.lora_B) == 0  # a fresh LoRA changes nothing
    assert attn.qkv.lora_A.abs().max() <= 1.0 / DIM ** 0.5  # kaiming-uniform(a = sqrt 5): U(+-1/sqrt(fan_in))
    assert attn.qkv.lora_A.abs().max() > 0.8 / DIM ** 0.5


def test_same_output_as_loralib_itself():
    loralib = pytest.importorskip("loralib")  # not a dependency: checked when it is installed
    attn = _attention()
    hd = DIM // HEADS
    qkv = loralib.MergedLinear(DIM, 3 * DIM, r=RANK, lora_alpha=ALPHA, enable_lora=[True] * 3, bias=False)
    proj = loralib.Linear(DIM, DIM, r=RANK, lora_alpha=ALPHA, bias=False)
    with torch.no_grad():
        qkv.weight.copy_(attn.qkv.weight.view(HEADS, 3, hd, DIM).transpose(0, 1).reshape(3 * DIM, DIM))
        qkv.lora_A.copy_(attn.qkv.lora_A)
        qkv.lora_B.copy_(attn.qkv.lora_B)
        proj.weight.copy_(attn.proj.weight)
        proj.lora_A.copy_(attn.proj.lora_A)
        proj.lora_B.copy_(attn.proj.lora_B)
    x = torch.randn(2, 5, DIM)
    for mode in (True, False):  # train: unmerged; eval: loralib merges the update into its weight
        qkv.train(mode)
        proj.train(mode)
        with torch.no_grad():
            q, k, v = qkv(x).view(2, 5, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
            want = proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
            torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(kv_heads=1), dict(fused_qkv=False, kv_heads=1), dict(cross=True),
                                    dict(cross=True, fused_qkv=False)])
@pytest.mark.parametrize("flags", [{}, {"q": False}, {"k": False, "v": False}])
def test_each_part_updates_its_own_rows(kwargs, flags):
    """Grouped-query, separate and cross-attention projections: each enabled part's B A lands on exactly that
    part's output rows (the per-group layout of a fused projection), the others are unchanged."""
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, lora=Factory("Lora", Lora, {"rank": RANK, **flags}), **kwargs)
    init_model(attn)
    hd = DIM // HEADS
    for name, m in attn.named_modules():
        if not isinstance(m, LoraLinear):
            continue
        with torch.no_grad():
            m.lora_B.normal_()
        delta = m.delta_weight()
        parts = {"qkv": ["q"] * HEADS + ["k", "v"], "kv": ["k", "v"]}.get(name, [name])  # per group, head_dim rows
        per_group = delta.view(m.groups, len(parts), -1, DIM) if name in ("qkv", "kv") else delta.view(1, 1, -1, DIM)
        for i, part in enumerate(parts):
            changed = bool(per_group[:, i].abs().sum() > 0)
            assert changed == Lora(**flags).flags[part], (name, part)
        x = torch.randn(3, DIM)
        torch.testing.assert_close(m(x), F.linear(x, m.weight + delta, m.bias), atol=1e-5, rtol=1e-5)
    assert hd * HEADS == DIM


def test_bad_lora_settings_are_refused():
    with pytest.raises(ValueError, match="rank"):
        Lora(rank=0)
    with pytest.raises(ValueError, match="adapts nothing"):
        Lora(q=False, k=False, v=False, proj=False)

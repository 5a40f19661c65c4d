"""`grouped_experts` (what an expert-parallel rank runs on the rows it received, grouped by expert) computes
what the MoE's own dispatch does, empty experts included, with gradients through autograd."""

from __future__ import annotations

import torch

from l3m.model.blocks.moe import MoE, grouped_experts


def test_grouped_experts_match_the_moe_dispatch():
    torch.manual_seed(0)
    moe = MoE(8, 16, num_experts=4, top_k=1, act="gelu", normalize=False)
    x = torch.randn(12, 8)
    _, idx, weights = moe.route(x)
    idx[:, 0] = torch.where(idx[:, 0] == 2, 0, idx[:, 0])  # expert 2 gets no row
    order = torch.argsort(idx[:, 0], stable=True)
    counts = torch.bincount(idx[:, 0], minlength=4).tolist()
    assert counts[2] == 0
    y = grouped_experts(x[order], moe.w1, moe.w3, moe.w2, counts, "gelu")
    want = torch.zeros_like(x)
    for t in range(12):
        e = int(idx[t, 0])
        h = torch.nn.functional.gelu(x[t] @ moe.w1[e].t()) * (x[t] @ moe.w3[e].t())
        want[t] = h @ moe.w2[e].t()
    torch.testing.assert_close(y, want[order], rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert moe.w1.grad is not None and moe.w1.grad[2].abs().sum() == 0

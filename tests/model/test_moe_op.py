"""The MoE dispatch operator: its hand-written backward equals autograd through the eager dispatch."""

from __future__ import annotations

import math

import pytest
import torch

from l3m.model.blocks.moe import MoE, _dispatch


@pytest.mark.parametrize("top_k, capacity_factor, act", [(1, None, "silu"), (2, None, "silu"), (1, 0.5, "silu"),
                                                         (2, 1.0, "silu"), (1, None, "gelu"), (2, 1.0, "gelu")])
def test_operator_gradients_match_autograd(top_k, capacity_factor, act):
    torch.manual_seed(0)
    m = MoE(8, 16, num_experts=3, top_k=top_k, capacity_factor=capacity_factor, act=act).double()
    x = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    out, _ = m(x)
    out.sin().sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]

    for p in m.parameters():
        p.grad = None
    x2 = x.detach().clone().requires_grad_()
    xf = x2.reshape(-1, 8)
    _, idx, weights = m.route(xf)
    capacity = math.ceil(capacity_factor * 10 * top_k / 3) if capacity_factor else -1
    ref = _dispatch(xf, m.w1, m.w3, m.w2, idx.t().reshape(-1), torch.arange(10).repeat(top_k),
                    weights.t().reshape(-1), capacity, act)
    ref.reshape(2, 5, 8).sin().sum().backward()
    want = [x2.grad] + [p.grad for p in m.parameters()]
    torch.testing.assert_close(out, ref.reshape(2, 5, 8), rtol=0, atol=0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)

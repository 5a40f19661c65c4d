"""Transformer semantics (causality, masks, hidden states, aux loss) and MoE against a per-token loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from l3m.model.blocks.moe import MoE, balance_loss
from l3m.model.blocks.transformer import CrossAttentionDecoder, Transformer


def small(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(**{"dim": 16, "depth": 2, "heads": 2, **kw}).eval()


@pytest.mark.parametrize("rope", [False, True])
def test_causal_outputs_ignore_the_future(rope):
    t = small(causal=True, rope=rope, mlp="swiglu", hidden=32)
    x = torch.randn(2, 6, 16)
    y = t(x)[0]
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)
    y2 = t(x2)[0]
    torch.testing.assert_close(y2[:, :4], y[:, :4])
    assert not torch.allclose(y2[:, 4:], y[:, 4:])


def test_mask_is_combined_with_causal():
    t = small(causal=True)
    x = torch.randn(2, 5, 16)
    everything = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    torch.testing.assert_close(t(x, mask=everything)[0], t(x)[0])
    # A bidirectional model given a causal mask is the causal model.
    tril = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    bi = small(causal=False)
    torch.testing.assert_close(bi(x, mask=tril)[0], t(x)[0])


def test_prefix_mask_makes_prefix_bidirectional():
    from l3m.model.blocks.masks import PrefixCausalMask

    t = small(causal=False)  # with causal=True the mask would be intersected with causal
    x = torch.randn(1, 5, 16)
    mask = PrefixCausalMask()(x, torch.tensor([3]))
    y = t(x, mask=mask)[0]
    x2 = x.clone()
    x2[:, 2] += torch.randn(16)  # inside the prefix: changes earlier prefix outputs too
    assert not torch.allclose(t(x2, mask=mask)[0][:, 0], y[:, 0])
    x3 = x.clone()
    x3[:, 4] += torch.randn(16)  # after the prefix: changes nothing before it
    torch.testing.assert_close(t(x3, mask=mask)[0][:, :4], y[:, :4])
    assert not torch.allclose(t(x3, mask=mask)[0][:, 4], y[:, 4])


def test_single_layer_matches_hand_computation():
    t = small(depth=1, mlp="gelu", hidden=32, final_norm=True)
    x = torch.randn(2, 4, 16)
    layer = t.layers[0]
    h = x + layer.attn(F.layer_norm(x, (16,), eps=1e-6))
    n2 = F.layer_norm(h, (16,), eps=1e-6)
    h = h + layer.mlp.w2(F.gelu(layer.mlp.w1(n2)))
    torch.testing.assert_close(t(x)[0], F.layer_norm(h, (16,), eps=1e-6))


def test_return_hidden_averages_last_layers():
    t = small(depth=3, return_hidden=2)
    x = torch.randn(2, 4, 16)
    outs, h = [], x
    for layer in t.layers:
        h, _ = layer(h)
        outs.append(h)
    y, aux, hidden = t(x)
    torch.testing.assert_close(hidden, t.norm((outs[1] + outs[2]) / 2))
    torch.testing.assert_close(y, t.norm(outs[2]))
    assert aux.dim() == 0 and aux.item() == 0.0


def test_aux_loss_averages_moe_layers():
    # As ml-l3m (megablocks' batched_load_balancing_loss): the mean over the MoE layers, not the sum.
    t = small(depth=4, moe_every=2, num_experts=4, top_k=2, hidden=32, moe_aux_scale=0.5)
    assert [type(layer.mlp).__name__ for layer in t.layers] == ["MLP", "MoE", "MLP", "MoE"]
    x = torch.randn(2, 6, 16)
    h, expected = x, torch.zeros(())
    for layer in t.layers:
        h, a = layer(h)
        if a is not None:
            expected = expected + a
    aux = t(x)[1]
    torch.testing.assert_close(aux, 0.5 * expected / 2)
    assert aux > 0
    aux.backward()
    assert t.layers[1].mlp.router.weight.grad.abs().sum() > 0


def test_attention_free_layers_mix_no_tokens():
    t = small(attention=False)
    assert t.layers[0].attn is None
    x = torch.randn(1, 4, 16)
    y = t(x)[0]
    x2 = x.clone()
    x2[:, 0] += torch.randn(16)
    torch.testing.assert_close(t(x2)[0][:, 1:], y[:, 1:])
    assert not torch.allclose(t(x2)[0][:, 0], y[:, 0])


def test_cross_attention_decoder_reads_context():
    torch.manual_seed(0)
    dec = CrossAttentionDecoder(dim=16, depth=1, heads=2, context_dim=8, causal=True).eval()
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 3, 8)
    y = dec(x, ctx)[0]
    assert not torch.allclose(dec(x, ctx + torch.randn(2, 3, 8))[0], y)
    with pytest.raises(ValueError, match="context"):
        dec(x, None)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="kv_heads"):
        Transformer(16, 1, 4, kv_heads=3)
    with pytest.raises(ValueError, match="attention or an mlp"):
        Transformer(16, 1, 4, attention=False, mlp="none")
    with pytest.raises(ValueError, match="init"):
        Transformer(16, 1, 4, init="kaiming")
    with pytest.raises(ValueError, match="return_hidden"):
        Transformer(16, 1, 4, return_hidden=2)


# ---- MoE --------------------------------------------------------------------------------


def moe_reference(moe: MoE, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token: route, then sum the chosen experts' outputs (with a capacity, an expert
    takes first choices before second choices, earlier tokens first)."""
    xf = x.reshape(-1, moe.dim)
    out = torch.zeros_like(xf)
    probs = (xf @ moe.router.weight.t()).softmax(dim=-1)
    choices = [probs[t].topk(moe.top_k) for t in range(xf.shape[0])]
    load = [0] * moe.num_experts
    for r in range(moe.top_k):
        for t, (w, idx) in enumerate(choices):
            e = int(idx[r])
            if capacity is not None and load[e] >= capacity:
                continue
            load[e] += 1
            weight = w[r] / w.sum() if moe.top_k > 1 and moe.normalize else w[r]
            act = F.gelu if moe.act == "gelu" else F.silu
            h = act(xf[t] @ moe.w1[e].t()) * (xf[t] @ moe.w3[e].t())
            out[t] += weight * (h @ moe.w2[e].t())
    return out.view_as(x)


@pytest.mark.parametrize("top_k, act, normalize", [(1, "silu", True), (2, "silu", True), (1, "gelu", True),
                                                   (2, "gelu", False)])
def test_moe_dropless_matches_per_token_loop(top_k, act, normalize):
    torch.manual_seed(0)
    moe = MoE(8, 16, num_experts=4, top_k=top_k, act=act, normalize=normalize)
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)  # decisive routing
    x = torch.randn(2, 7, 8)
    y, aux = moe(x)
    torch.testing.assert_close(y, moe_reference(moe, x), atol=1e-5, rtol=1e-5)
    assert aux.dim() == 0


@pytest.mark.parametrize("top_k, factor", [(1, 0.5), (2, 0.5), (2, 100.0)])
def test_moe_capacity_drops_overflow(top_k, factor):
    torch.manual_seed(1)
    moe = MoE(8, 16, num_experts=4, top_k=top_k, capacity_factor=factor)
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)
    x = torch.randn(2, 8, 8)
    capacity = math.ceil(factor * 16 * top_k / 4)
    torch.testing.assert_close(moe(x)[0], moe_reference(moe, x, capacity), atol=1e-5, rtol=1e-5)
    if factor > 10:
        torch.testing.assert_close(moe(x)[0], moe_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_balance_loss_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    idx = probs.argmax(dim=-1, keepdim=True)  # experts 0, 1, 0, 2
    f = torch.tensor([2 / 4, 1 / 4, 1 / 4])
    p = probs.mean(dim=0)
    torch.testing.assert_close(balance_loss(probs, idx, 3), 3 * (f * p).sum())
    uniform = torch.full((6, 3), 1 / 3)
    balanced = torch.tensor([[0], [1], [2], [0], [1], [2]])
    torch.testing.assert_close(balance_loss(uniform, balanced, 3), torch.tensor(1.0))

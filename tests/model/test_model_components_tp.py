"""RopeMixed's per-head frequencies under a tensor-parallel plan (one-process gloo group): the plan shards
them by key/value head like the projections, and the parallelised trunk computes the same values."""

from __future__ import annotations

import copy

import torch

from l3m.interfaces import use
from l3m.model.blocks.layers import collect_tp_plan
from l3m.model.blocks.transformer import Transformer


def test_rope_mixed_frequencies_follow_the_heads(mesh):
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import parallelize_module

    torch.manual_seed(0)
    model = Transformer(16, 2, 4, kv_heads=2, mlp="swiglu", hidden=32,
                        attn=use("Attention", pos=use("RopeMixed", grid=[2, 2], prefix=1)))
    ref = copy.deepcopy(model)
    plan = collect_tp_plan(model)
    assert "layers.0.attn.pos" in plan
    parallelize_module(model, mesh, plan)
    freqs = model.layers[0].attn.pos.freqs
    assert isinstance(freqs, DTensor) and freqs.placements == (Shard(1),)
    x = torch.randn(2, 5, 16)
    out = model(x)[0]
    torch.testing.assert_close(out, ref(x)[0])
    out.sum().backward()
    assert freqs.grad is not None and freqs.grad.to_local().abs().sum() > 0

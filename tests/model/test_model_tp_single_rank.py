"""Tensor-parallel plans and distributed loss paths on a one-process gloo group.

One rank cannot show that heads are split, but it proves that every plan name resolves to a
module the style accepts, that parallelised blocks compute the same values, and that the
gather / vocab-parallel loss code runs. (Head splitting is checked in test_attention_numerics.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from l3m.model.blocks.embeddings import TokenEmbedding
from l3m.model.blocks.heads import LMHead
from l3m.model.blocks.layers import collect_tp_plan
from l3m.model.blocks.transformer import Transformer
from l3m.model.losses import ClipLoss, LMCrossEntropy


class TinyLM(nn.Module):
    def __init__(self, vocab_parallel: bool = False):
        super().__init__()
        self.embed = TokenEmbedding(13, 16)
        self.trunk = Transformer(16, 2, 4, kv_heads=2, mlp="swiglu", hidden=32, rope=True, causal=True, moe_every=2,
                                 num_experts=2, top_k=2)  # fmt: skip
        self.head = LMHead(16, 13, vocab_parallel=vocab_parallel)

    def forward(self, tokens):
        return self.head(self.trunk(self.embed(tokens))[0])


@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_tp_plans_apply_and_preserve_outputs(mesh, vocab_parallel):
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    torch.manual_seed(0)
    model = TinyLM(vocab_parallel)
    ref = copy.deepcopy(model)
    plan = collect_tp_plan(model)
    assert {"embed.emb", "head.proj", "trunk.layers.0.attn.qkv", "trunk.layers.1.attn.proj"} <= set(plan)
    assert not any(".mlp.w" in k and k.startswith("trunk.layers.1") for k in plan)  # MoE layer: no plan
    parallelize_module(model, mesh, plan)
    assert isinstance(model.trunk.layers[0].attn.qkv.weight, DTensor)
    tokens = torch.randint(0, 13, (2, 5))
    out = model(tokens)
    targets = torch.randint(0, 13, (2, 5))
    if vocab_parallel:
        assert isinstance(out, DTensor)
        loss = LMCrossEntropy(vocab_parallel=True, z_loss=1e-3)(out, targets)
        expected = LMCrossEntropy(z_loss=1e-3)(ref(tokens), targets)
        torch.testing.assert_close(loss.full_tensor() if isinstance(loss, DTensor) else loss, expected)
        loss.backward()
    else:
        torch.testing.assert_close(out, ref(tokens))


def test_clip_loss_gathers_under_distributed(mesh):
    torch.manual_seed(0)
    img = nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    txt = nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(20.0)
    gathered = ClipLoss(gather=True)(img, txt, scale)
    local = ClipLoss(gather=False)(img, txt, scale)
    torch.testing.assert_close(gathered, local)
    gathered.backward()
    assert img.grad is not None and img.grad.abs().sum() > 0

"""`l3m plan`: exact parameter counts, measured FLOPs and activations, per-rank memory arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from l3m.dsl.ir import Section
from l3m.model.build import build_model, materialize
from l3m.model.criterion import build_criterion
from l3m.plan import format_plan, plan
from l3m.registry import register


@register("block")
class ToyMasked(nn.Module):
    """Zeroes masked tokens: x [B, N, D], mask bool [B, N]."""

    outputs = ("x",)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x * (~mask).unsqueeze(-1)


@pytest.fixture
def lm(ir):
    """A small real-library language model fed by a real data source."""
    return ir.program(
        ir.source("train", "Synthetic", ["tokens", "targets"], kind="tokens", vocab=11, seq_len=6),
        ir.block("gpt.preprocessor.embed", "TokenEmbedding", ["tokens"], ["x"], vocab=11, dim=16),
        ir.block("gpt.trunk.blocks", "Transformer", ["x"], ["x"], dim=16, depth=2, heads=2, causal=True),
        ir.block("gpt.head.lm", "LMHead", ["x"], ["logits"], 16, 11, tie="embed"),
        ir.loss("ce", "LMCrossEntropy", ["logits", "targets"]),
        optimizer=ir.call("AdamW", lr=1e-3),
        train={"freeze": ["gpt.trunk.blocks.layers.0.*"]},
    )


def test_param_counts_are_exact(lm):
    p = plan(lm)
    real = materialize(build_model(lm))
    assert p["params"]["total"] == sum(t.numel() for t in real.parameters())  # the tie counts once
    assert p["params"]["trainable"] == sum(t.numel() for t in real.parameters() if t.requires_grad)
    assert 0 < p["params"]["trainable"] < p["params"]["total"]
    blocks = p["params"]["by_block"]
    assert blocks["gpt.preprocessor.embed"] == 11 * 16 and blocks["gpt.head.lm"] == 0
    assert blocks["gpt.trunk.blocks"] == sum(t.numel() for t in real.gpt.trunk.parameters())
    assert p["params"]["by_stage"]["gpt.trunk"] == blocks["gpt.trunk.blocks"]
    assert p["params"]["by_model"] == {"gpt": p["params"]["total"]}
    assert p["peak_memory"] is not None and p["peak_memory"]["peak"] > 0  # frozen layers do not stop the simulation
    json.dumps(p)


def test_flops_match_the_flop_counter_on_the_real_model(lm):
    p = plan(lm)
    torch.manual_seed(0)
    model, crit = materialize(build_model(lm)), build_criterion(lm, metrics=False)
    d = {"tokens": torch.randint(11, (1, 6)), "targets": torch.randint(11, (1, 6))}
    with FlopCounterMode(display=False) as fwd:
        loss = crit(model(d))[0]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    # Torch's counter has no formula for the CPU attention kernel; on meta, attention runs as two
    # [L, E] x [E, L] batched matmuls (4·B·H·L·L·E forward, twice that backward) per layer.
    attention = 2 * 4 * 1 * 2 * 6 * 6 * 8
    assert p["flops_per_sample"]["forward"] == fwd.get_total_flops() + attention
    assert p["flops_per_sample"]["backward"] == bwd.get_total_flops() + 2 * attention
    assert p["flops_per_sample"]["total"] == fwd.get_total_flops() + bwd.get_total_flops() + 3 * attention
    assert fwd.get_total_flops() > 0 and bwd.get_total_flops() > 0


def two_linears(ir, **train):
    return ir.program(
        ir.block("m.trunk.l1", "ToyLinear", ["x"], ["h"], 4, 8, bias=False),
        ir.block("m.trunk.l2", "ToyLinear", ["h"], ["y"], 8, 2, bias=False),
        ir.loss("mse", "ToyMSE", ["y", "t"]),
        keys={"x": ("float", ["B", 3, 4]), "t": ("float", ["B", "N", "two"])},
        lets={"two": 2, "N": 3},
        optimizer=ir.call("SGD", lr=0.1),
        train=train,
    )


def test_flops_and_activations_by_hand(ir):
    p = plan(two_linears(ir))
    # forward: 2·3·4·8 + 2·3·8·2; backward: l2's input and weight grads, l1's weight grad only.
    assert p["flops_per_sample"] == {"forward": 192 + 96, "backward": 96 + 96 + 192, "total": 672}
    # saved for backward: x (l1's weight grad), h (l2's), and the loss's y and t: 12 + 24 + 6 + 6 floats.
    assert p["activation_bytes_per_sample"] == 4 * (12 + 24 + 6 + 6)
    assert plan(two_linears(ir, dtype="bf16"))["activation_bytes_per_sample"] == 2 * (12 + 24 + 6 + 6)
    # With l1 frozen nothing before l2 needs a gradient: only l2's weight grad, and l1 saves nothing.
    frozen = plan(two_linears(ir, freeze=["m.trunk.l1.*"]))
    assert frozen["flops_per_sample"]["backward"] == 96
    assert frozen["activation_bytes_per_sample"] == 4 * (24 + 6 + 6)


def sharded(ir, optimizer, **mesh):
    prog = ir.program(
        ir.block("m.trunk.a", "ToyLinear", ["x"], ["y"], 16, 32, bias=False),  # weight [32, 16]
        ir.block("m.trunk.b", "ToyLinear", ["x"], ["z"], 16, 30),  # weight [30, 16], bias [30]
        keys={"x": ("float", ["B", 16])},
        optimizer=optimizer,
        train={"freeze": ["m.trunk.b.*"]},
        mesh=mesh,
    )
    return plan(prog, world_size=8)


def test_memory_per_rank_by_hand(ir):
    p = sharded(ir, ir.call("AdamW"), dp_replicate=2, dp_shard=-1, tp=2)
    assert p["mesh"] == {"dp_replicate": 2, "dp_shard": 2, "tp": 2, "cp": 1}
    # Sharded over dp_shard·tp = 4 dim-0 chunks: a 8×16 = 128, b ceil(30/4)=8 rows: 8×16 + 8 = 136.
    # fp32 params (all), fp32 grads and two fp32 AdamW moments (trainable `a` only).
    assert p["memory_per_rank"] == {"params": 4 * 264, "grads": 4 * 128, "optimizer": 8 * 128,
                                    "total": 4 * 264 + 4 * 128 + 8 * 128}  # fmt: skip
    assert p["params"]["total"] == 512 + 480 + 30 and p["params"]["trainable"] == 512
    # Unsharded over dp_replicate: 8 chunks, `a` holds 4×16 = 64 per rank; a momentum buffer is one state.
    assert sharded(ir, ir.call("SGD", momentum=0.0), dp_shard=-1)["memory_per_rank"]["optimizer"] == 0
    assert sharded(ir, ir.call("SGD", momentum=0.9), dp_shard=-1)["memory_per_rank"]["optimizer"] == 4 * 64
    assert sharded(ir, ir.call("LARS"), dp_shard=-1)["memory_per_rank"]["optimizer"] == 4 * 64
    odd = sharded(ir, ir.call("Shampoo"), dp_shard=-1)
    assert odd["memory_per_rank"]["optimizer"] == 8 * 64 and "Shampoo" in odd["notes"][0]
    with pytest.raises(ValueError, match="does not divide"):
        sharded(ir, ir.call("AdamW"), dp_shard=-1, tp=3)


def test_batch_from_source_spec_and_generators(ir):
    gen = ir.node("generator", "data.mask", "RandomMask", ["tokens"], ["mask"], num_tokens=6)
    prog = ir.program(
        ir.source("train", "Synthetic", ["tokens", "targets"], kind="tokens", vocab=11, seq_len=6),
        gen,
        ir.block("m.preprocessor.embed", "ToyEmbed", ["tokens"], ["x"], vocab=11, dim=4),
        ir.block("m.trunk.drop", "ToyMasked", ["x", "mask"], ["x"]),
        ir.block("m.head.lm", "ToyLinear", ["x"], ["logits"], 4, 11, bias=False),
        ir.loss("ce", "ToyCE", ["logits", "targets"]),
        optimizer=ir.call("AdamW"),
    )
    p = plan(prog)
    assert p["notes"] == [] and p["flops_per_sample"]["forward"] == 2 * 6 * 4 * 11
    prog.nodes.remove(gen)
    p = plan(prog)
    assert p["flops_per_sample"] is None and "no shape known for mask" in p["notes"][0]


def test_missing_shapes_leave_params_and_memory(ir):
    prog = ir.program(ir.block("m.trunk.a", "ToyLinear", ["x"], ["y"], 4, 4))
    p = plan(prog, world_size=2)
    assert p["flops_per_sample"] is None and p["activation_bytes_per_sample"] is None
    assert p["params"]["total"] == 20 and p["memory_per_rank"]["params"] == 4 * (2 * 4 + 2)
    assert any("no shape known for x" in n for n in p["notes"])


def test_format_plan_shows_the_numbers(lm):
    lm.sections["train"] = Section("train", None, {})
    text = format_plan(plan(lm, world_size=2))
    p = plan(lm, world_size=2)
    assert f"{p['params']['total']:,}" in text
    assert "gpt.trunk.blocks" in text and "dp_shard=2" in text and "FLOPs per sample" in text

"""Every block: meta-device build and initialisation, output shapes, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from model_cases import CASES, as_tuple
from torch import nn

from l3m.model.init import check_initialised
from l3m.registry import entries, lookup


def build(case, device: str | None = None) -> nn.Module:
    cls = lookup(case.name).obj
    if device is None:
        return cls(**case.kwargs)
    with torch.device(device):
        return cls(**case.kwargs)


def test_every_block_has_a_case():
    covered = {c.name for c in CASES}
    missing = sorted(e.name for e in entries("block") if e.module.startswith("l3m.model") and e.name not in covered)
    assert not missing, f"blocks without a test case in model_cases.py: {missing}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_meta_build_then_init(case):
    torch.manual_seed(0)
    model = build(case, "meta")
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    model.to_empty(device="cpu")
    check_initialised(model)  # raises, naming the tensors, if some init_weights forgot one
    outs = as_tuple(model(*case.inputs(), **case.kw_inputs()))
    for o in outs:
        if o is not None and o.is_floating_point():
            assert torch.isfinite(o).all()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_on_meta(case):
    """`l3m plan` runs a step on meta tensors to count FLOPs: no block may need real values."""
    model = build(case, "meta")
    inputs = [t.to("meta") for t in case.inputs()]
    kw = {k: v.to("meta") for k, v in case.kw_inputs().items()}
    outs = as_tuple(model(*inputs, **kw))
    for o, shape in zip(outs, case.shapes):
        assert (o is None) if shape is None else (o.is_meta and tuple(o.shape) == shape)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_shapes_and_gradients(case):
    torch.manual_seed(0)
    model = build(case)
    model.train()
    inputs = case.inputs()
    kw = case.kw_inputs()
    for t in [*inputs, *kw.values()]:
        if t.is_floating_point():
            t.requires_grad_(True)
    outs = as_tuple(model(*inputs, **kw))
    assert len(outs) == len(case.shapes)
    for o, shape in zip(outs, case.shapes):
        if shape is None:
            assert o is None
        else:
            assert tuple(o.shape) == shape
    loss = sum(o.float().pow(2).sum() for o in outs if o is not None and o.is_floating_point())
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        assert not list(model.parameters()), "a block with parameters produced no gradient path"
        return
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
    for t in inputs:
        if t.is_floating_point():
            assert t.grad is not None and t.grad.abs().sum() > 0


def test_check_initialised_names_what_was_forgotten():
    class Forgetful(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lookup("Linear").obj(4, 4)
            self.scale = nn.Parameter(torch.ones(4))  # no init_weights for this one

    with torch.device("meta"):
        m = Forgetful()
    m.to_empty(device="cpu")
    with pytest.raises(RuntimeError, match="scale"):
        check_initialised(m)


def test_init_model_falls_back_to_reset_parameters():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    m.to_empty(device="cpu")
    check_initialised(m)


@pytest.mark.parametrize(
    "init, std",
    [("trunc_normal", 0.02), ("normal", 0.05), ("fan_in_depth", 1 / 16 / 4), ("xavier_uniform", math.sqrt(2 / 512))],
)
def test_init_styles(init, std):
    torch.manual_seed(0)
    lin = lookup("Linear").obj(256, 256, init=init, init_std=std if init in ("normal", "trunc_normal") else 0.02,
                               init_depth=8)  # fmt: skip
    w = lin.weight.detach()
    assert lin.bias.abs().max() == 0
    if init == "trunc_normal":  # truncated at 2 std, which shrinks the std by ~12%
        assert w.abs().max() <= 2 * std + 1e-7
        assert 0.8 * std < w.std() < 0.95 * std
    elif init == "xavier_uniform":
        assert w.abs().max() <= math.sqrt(6 / 512)
        assert abs(w.std() - std) < 0.05 * std
    else:
        assert abs(w.std() - std) < 0.05 * std


def test_fan_in_depth_scales_only_output_projections():
    torch.manual_seed(0)
    t = lookup("Transformer").obj(dim=64, depth=8, heads=4, hidden=256, init="fan_in_depth")
    layer = t.layers[0]
    assert abs(layer.attn.qkv.weight.std() - 64**-0.5) < 0.05 * 64**-0.5
    assert abs(layer.attn.proj.weight.std() - 64**-0.5 / 4) < 0.05 * 64**-0.5 / 4
    assert abs(layer.mlp.w2.weight.std() - 256**-0.5 / 4) < 0.05 * 256**-0.5 / 4


def test_lmhead_ties_to_token_embedding():
    emb = lookup("TokenEmbedding").obj(11, 8)
    head = lookup("LMHead").obj(8, 11, tie="embed")
    head.tie_weight(emb.weight)
    assert head.weight is emb.weight and head.tie == "embed"
    model = nn.ModuleDict({"embed": emb, "head": head})
    assert len(list(model.parameters())) == 1
    check_initialised(model)
    with pytest.raises(ValueError, match="shape"):
        lookup("LMHead").obj(8, 12).tie_weight(emb.weight)


def test_posembed_offset_and_short_sequences():
    pe = lookup("PosEmbed").obj(dim=8, num=3, offset=1)
    out = pe(torch.zeros(1, 5, 8))
    assert out[:, 0].abs().max() == 0 and out[:, 4].abs().max() == 0
    torch.testing.assert_close(out[:, 1:4], pe.pos.detach())
    short = pe(torch.zeros(1, 3, 8))  # only two positions fit after the offset
    torch.testing.assert_close(short[:, 1:], pe.pos.detach()[:, :2])


def test_cls_token_and_pools():
    cls = lookup("ClsToken").obj(4, num_registers=1)
    x = torch.randn(2, 3, 4)
    y = cls(x)
    torch.testing.assert_close(y[:, 2:], x)
    torch.testing.assert_close(y[0, 0], cls.cls.detach()[0, 0])
    torch.testing.assert_close(lookup("ClsPool").obj()(y), y[:, 0])
    torch.testing.assert_close(lookup("AvgPool").obj(start=2)(y), x.mean(dim=1))
    torch.testing.assert_close(lookup("SelectTokens").obj(start=2)(y), x)


def test_eos_pool_picks_first_eos_like_the_original_or_last_on_request():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    tokens = torch.tensor([[1, 2, 3, 2, 0], [1, 1, 1, 1, 1]])
    # ml-l3m's ExtractEOS: the first EOS (argmax of ids == eos), position 0 without one.
    assert lookup("EosPool").obj(eos_id=2)(x, tokens).flatten().tolist() == [1.0, 5.0]
    assert lookup("EosPool").obj(eos_id=2, which="last")(x, tokens).flatten().tolist() == [3.0, 9.0]


def test_patch_embed_is_raster_order_like_patchify():
    from l3m.model.losses import patchify

    p, c = 2, 3
    pe = lookup("PatchEmbed").obj(dim=p * p * c, patch=p, in_chans=c, bias=False)
    with torch.no_grad():  # one-hot weights that copy pixel (i, j, channel) to output (i*p + j)*c + channel
        pe.weight.zero_()
        for i in range(p):
            for j in range(p):
                for ch in range(c):
                    pe.weight[(i * p + j) * c + ch, ch, i, j] = 1.0
    image = torch.randn(2, c, 4, 6)
    torch.testing.assert_close(pe(image), patchify(image, p))


def test_drop_path_drops_whole_samples():
    from l3m.model.blocks.layers import DropPath

    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    x = torch.ones(64, 3, 2)
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.min(dim=1).values == per_sample.max(dim=1).values).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    torch.testing.assert_close(dp.eval()(x), x)


def test_clip_projection_normalises_and_clamps_scale():
    proj = lookup("ClipProjection").obj(8, 4)
    emb, scale = proj(torch.randn(3, 8))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert scale.dim() == 0
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))
    with torch.no_grad():
        proj.logit_scale.fill_(10.0)
    torch.testing.assert_close(proj(torch.randn(3, 8))[1], torch.tensor(100.0))

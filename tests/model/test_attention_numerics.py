"""Attention, RoPE, masks and position tables against straightforward reference computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from l3m.model.blocks.attention import Attention, attend
from l3m.model.blocks.embeddings import RotaryEmbedding, apply_rope, sincos_1d, sincos_2d
from l3m.model.blocks.feedforward import MLP, mlp_hidden
from l3m.model.blocks.masks import CausalMask, DocumentMask, PaddingMask, PrefixCausalMask
from l3m.model.blocks.transformer import Transformer


def ref_attention(q, k, v, mask=None, causal=False):
    """softmax(QK^T / sqrt(d)) V on `[B, N, H, d]`, k/v heads repeated for GQA."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhnm,bmhd->bnhd", s.softmax(dim=-1), v).flatten(2)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal, use_mask", [(False, False), (True, False), (False, True), (True, True)])
def test_attend_matches_reference(kv_heads, causal, use_mask):
    torch.manual_seed(0)
    q = torch.randn(2, 6, 4, 8)
    k, v = torch.randn(2, 6, kv_heads, 8), torch.randn(2, 6, kv_heads, 8)
    mask = None
    if use_mask:
        mask = torch.rand(2, 1, 6, 6) > 0.4
        mask |= torch.eye(6, dtype=torch.bool)  # no empty rows
    out = attend(q, k, v, mask=mask, is_causal=causal)
    torch.testing.assert_close(out, ref_attention(q, k, v, mask=mask, causal=causal), atol=1e-5, rtol=1e-5)


def fuse_qkv(unfused: Attention, fused: Attention) -> None:
    """Copy separate q/k/v weights into the fused layout `[q_1..q_rep, k, v]` per kv group."""
    hd, rep = unfused.head_dim, unfused.rep
    d = unfused.q.in_features
    wq = unfused.q.weight.view(-1, rep, hd, d)
    wk = unfused.k.weight.view(-1, 1, hd, d)
    wv = unfused.v.weight.view(-1, 1, hd, d)
    with torch.no_grad():
        fused.qkv.weight.copy_(torch.cat([wq, wk, wv], dim=1).reshape(-1, d))
        fused.proj.weight.copy_(unfused.proj.weight)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_module_matches_reference(kv_heads):
    torch.manual_seed(0)
    dim, heads = 16, 4
    unfused = Attention(dim, heads, kv_heads=kv_heads, fused_qkv=False)
    fused = Attention(dim, heads, kv_heads=kv_heads, fused_qkv=True)
    fuse_qkv(unfused, fused)
    x = torch.randn(2, 5, dim)
    q = (x @ unfused.q.weight.t()).view(2, 5, heads, 4)
    k = (x @ unfused.k.weight.t()).view(2, 5, kv_heads, 4)
    v = (x @ unfused.v.weight.t()).view(2, 5, kv_heads, 4)
    ref = ref_attention(q, k, v, causal=True) @ unfused.proj.weight.t()
    torch.testing.assert_close(unfused(x, is_causal=True), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused(x, is_causal=True), ref, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_reference():
    torch.manual_seed(0)
    attn = Attention(16, 4, cross=True, context_dim=8, fused_qkv=False)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    q = (x @ attn.q.weight.t()).view(2, 5, 4, 4)
    k = (ctx @ attn.k.weight.t()).view(2, 3, 4, 4)
    v = (ctx @ attn.v.weight.t()).view(2, 3, 4, 4)
    ref = ref_attention(q, k, v) @ attn.proj.weight.t()
    torch.testing.assert_close(attn(x, context=ctx), ref, atol=1e-5, rtol=1e-5)


def shard(module: nn.Module, rank: int, world: int) -> nn.Module:
    """What a rank holds after its tp_plan: colwise weights split by rows, rowwise by columns."""
    local = copy.deepcopy(module)
    for name, style in module.tp_plan().items():
        kind = type(style).__name__
        if kind == "SequenceParallel":  # replicated weights (qk norms)
            continue
        lin = local.get_submodule(name)
        dim = 0 if kind == "ColwiseParallel" else 1
        w = lin.weight.detach().chunk(world, dim=dim)[rank]
        lin.weight = nn.Parameter(w.clone())
        if lin.bias is not None:
            b = lin.bias.detach().chunk(world)[rank] if dim == 0 else lin.bias.detach() / world
            lin.bias = nn.Parameter(b.clone())
    return local


@pytest.mark.parametrize(
    "kwargs",
    [dict(kv_heads=2, fused_qkv=True), dict(kv_heads=2, fused_qkv=False, qkv_bias=True), dict(qk_norm=True)],
)
def test_attention_runs_on_tensor_parallel_shards(kwargs):
    """Summing the ranks' partial outputs (RowwiseParallel's all-reduce) gives the full output."""
    torch.manual_seed(0)
    attn = Attention(16, 4, proj_bias=True, **kwargs)
    x = torch.randn(2, 5, 16)
    rope = RotaryEmbedding(4)(5)
    full = attn(x, is_causal=True, rope=rope)
    partial = sum(shard(attn, r, 2)(x, is_causal=True, rope=rope) for r in range(2))
    torch.testing.assert_close(partial, full, atol=1e-5, rtol=1e-5)


def test_glu_mlp_runs_on_tensor_parallel_shards():
    torch.manual_seed(0)
    mlp = MLP(16, 32, act="silu", glu=True)
    x = torch.randn(2, 5, 16)
    partial = sum(shard(mlp, r, 2)(x) for r in range(2))
    torch.testing.assert_close(partial, mlp(x), atol=1e-5, rtol=1e-5)


def test_short_reduced_precision_attention_on_the_cpu_runs_in_fp32(monkeypatch):
    """Under bf16 autocast on an AMX-less CPU, short attention calls SDPA in float32 (faster there) and
    hands back bf16 values and gradients close to a float32 reference; long attention stays in bf16."""
    import torch.nn.functional as F

    import l3m.model.blocks.attention as attention

    monkeypatch.setattr(attention, "_AMX_BF16", False)
    monkeypatch.setattr(attention, "_AMX_FP16", False)
    seen: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda q, *a, **kw: seen.append(q.dtype)
                        or sdpa(q, *a, **kw))
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 16, h, 32, requires_grad=True) for h in (4, 2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(*(t.bfloat16() for t in (q, k, v)), is_causal=True)
    out.float().square().sum().backward()
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    ref = attend(q, k, v, is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    grad = q.grad.clone()
    q.grad = None
    ref.square().sum().backward()
    torch.testing.assert_close(grad, q.grad, atol=5e-2, rtol=5e-2)

    long_q = torch.randn(1, 8, 1, 64, dtype=torch.bfloat16)
    assert attention.fp32_attention(long_q, torch.zeros(1, 129, 1, 64, dtype=torch.bfloat16)) is False
    assert attention.fp32_attention(long_q, torch.zeros(1, 128, 1, 64, dtype=torch.bfloat16)) is True
    assert attention.fp32_attention(long_q.half(), torch.zeros(1, 4096, 1, 64).half()) is True  # fp16: any length
    assert attention.fp32_attention(long_q.float(), torch.zeros(1, 8, 1, 64)) is False
    monkeypatch.setattr(attention, "_AMX_BF16", True)
    assert attention.fp32_attention(long_q, torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)) is False


def test_tp_plan_names_exist():
    t = Transformer(16, 2, 4, mlp="swiglu", hidden=32, cross_attention=True)
    plan = t.tp_plan()
    assert "layers.1.attn.qkv" in plan and "layers.1.mlp.w3" in plan and "layers.0.cross_attn.kv" in plan
    for name in plan:
        assert isinstance(t.get_submodule(name), nn.Linear)


# ---- RoPE -------------------------------------------------------------------------------


def test_rope_matches_complex_rotation():
    torch.manual_seed(0)
    hd, n, theta = 8, 6, 10000.0
    x = torch.randn(1, n, 2, hd)
    out = apply_rope(x, *RotaryEmbedding(hd, theta)(n))
    half = hd // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / hd)
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    rot = z * torch.polar(torch.ones(n, half, dtype=torch.float64), torch.arange(n)[:, None] * freqs)[None, :, None]
    torch.testing.assert_close(out, torch.cat([rot.real, rot.imag], dim=-1).float(), atol=1e-5, rtol=1e-5)


def test_every_table_shape_rotates_as_rotate_half():
    """Per-position `[N, hd]`, per-sequence `[B, N, hd]` (generation) and per-head `[N, H, hd]` tables
    (RopeMixed) turn `x` as the textbook `x cos + rotate_half(x) sin`, and keep its dtype."""
    from l3m.model.blocks.rope import rotate

    torch.manual_seed(0)
    b, n, h, hd = 2, 5, 3, 8
    x = torch.randn(b, n, h, hd)
    angles = torch.randn(b, n, h, hd // 2)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def textbook(c, s):
        x1, x2 = x.chunk(2, dim=-1)
        return x * c + torch.cat([-x2, x1], dim=-1) * s

    torch.testing.assert_close(apply_rope(x, cos[0, :, 0], sin[0, :, 0]),
                               textbook(cos[0, :, 0][None, :, None], sin[0, :, 0][None, :, None]))
    torch.testing.assert_close(apply_rope(x, cos[:, :, 0], sin[:, :, 0]), textbook(cos[:, :, :1], sin[:, :, :1]))
    torch.testing.assert_close(rotate(x, cos[0], sin[0]), textbook(cos[:1], sin[:1]))
    assert apply_rope(x.bfloat16(), cos[0, :, 0], sin[0, :, 0]).dtype == torch.bfloat16


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    hd, n = 16, 7
    q = torch.randn(hd).expand(1, n, 1, hd)
    k = torch.randn(hd).expand(1, n, 1, hd)
    cos, sin = RotaryEmbedding(hd)(n)
    rq, rk = apply_rope(q, cos, sin)[0, :, 0], apply_rope(k, cos, sin)[0, :, 0]
    s = rq @ rk.t()
    torch.testing.assert_close(s[1:, 1:], s[:-1, :-1], atol=1e-5, rtol=1e-5)  # constant along diagonals
    torch.testing.assert_close(rq.norm(dim=-1), q[0, :, 0].norm(dim=-1))  # a rotation
    torch.testing.assert_close(rq[0], q[0, 0, 0])  # position 0 is not rotated


# ---- masks ------------------------------------------------------------------------------


def test_causal_mask():
    m = CausalMask()(torch.zeros(2, 3, 4))
    assert m.shape == (2, 1, 3, 3) and m.dtype == torch.bool
    assert m[1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_prefix_causal_mask():
    m = PrefixCausalMask(offset=1)(torch.zeros(2, 4, 1), torch.tensor([1, 0]))
    assert m[0, 0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert m[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    m = PrefixCausalMask()(torch.zeros(1, 3, 1), torch.tensor([3]))
    assert m.all()


def test_padding_mask():
    m = PaddingMask(pad_id=0)(torch.tensor([[5, 6, 0]]))
    assert m[0, 0].int().tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]


def test_document_mask():
    m = DocumentMask(eos_id=9)(torch.tensor([[1, 9, 2, 3, 9]]))
    assert m[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


# ---- sin-cos tables -----------------------------------------------------------------------


def test_sincos_1d_formula():
    dim = 6
    t = sincos_1d(dim, torch.arange(4))
    for p in range(4):
        for i in range(dim // 2):
            w = 10000 ** (-i / (dim // 2))
            assert t[p, i].item() == pytest.approx(math.sin(p * w))
            assert t[p, dim // 2 + i].item() == pytest.approx(math.cos(p * w))


def test_sincos_2d_columns_then_rows():
    # MAE's / ml-l3m's layout: the first half encodes the column (x), the second the row (y).
    t = sincos_2d(8, 2, 3)
    assert t.shape == (6, 8)
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(t[r * 3 + c, :4], sincos_1d(4, torch.tensor([c]))[0])
            torch.testing.assert_close(t[r * 3 + c, 4:], sincos_1d(4, torch.tensor([r]))[0])


def test_sincos_buffers_recomputed_after_meta_build():
    from l3m.model.blocks.embeddings import PosEmbed
    from l3m.model.init import init_model

    with torch.device("meta"):
        pe, rope = PosEmbed(8, 6, kind="sincos2d", grid=[2, 3]), RotaryEmbedding(8, theta=100.0)
    pe.to_empty(device="cpu")
    rope.to_empty(device="cpu")
    init_model(pe)
    init_model(rope)
    torch.testing.assert_close(pe.pos[0], sincos_2d(8, 2, 3).float())
    torch.testing.assert_close(rope.inv_freq, torch.tensor([1.0, 0.1 ** 0.5, 0.1, 0.1 ** 1.5]))
    assert not pe.pos.requires_grad and "pos" not in pe.state_dict()


# ---- hidden sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("dim, hidden", [(1024, 2816), (768, 2048), (2048, 5632)])
def test_swiglu_hidden_rounding(dim, hidden):
    assert mlp_hidden(dim, 4.0, glu=True) == hidden
    with torch.device("meta"):
        t = Transformer(dim, 1, 16, mlp="swiglu")
    assert t.layers[0].mlp.w1.out_features == hidden and t.layers[0].mlp.w3.out_features == hidden


def test_gelu_hidden_and_explicit_hidden():
    assert mlp_hidden(768, 4.0) == 3072
    with torch.device("meta"):
        assert Transformer(64, 1, 4, mlp_ratio=2.5).layers[0].mlp.w1.out_features == 160
        assert Transformer(64, 1, 4, mlp="swiglu", hidden=100).layers[0].mlp.w1.out_features == 100

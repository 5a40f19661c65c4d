"""Components of a Transformer (issue #17): Attention with a `pos`, Rope / Rope2d / RopeMixed, SwiGLU /
GeGLU, Norm components; the same parameters and function as the legacy flat arguments."""

from __future__ import annotations

import math

import pytest
import torch

from l3m.dsl.ir import Call, Span
from l3m.interfaces import interfaces_of, use
from l3m.model.blocks.attention import Attention
from l3m.model.blocks.feedforward import MLP, GeGLU, SwiGLU
from l3m.model.blocks.moe import MoE
from l3m.model.blocks.norms import LayerNorm, RMSNorm
from l3m.model.blocks.rope import Rope, Rope2d, RopeMixed, grid_of
from l3m.model.blocks.transformer import CrossAttentionDecoder, Transformer
from l3m.model.build import ComponentFailure, components
from l3m.model.components import Factory


def names(m: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in m.named_parameters()]


def test_entries_implement_their_interfaces():
    assert interfaces_of(LayerNorm) == interfaces_of(RMSNorm) == ("Norm",)
    for cls in (MLP, SwiGLU, GeGLU, MoE):
        assert interfaces_of(cls) == ("FeedForward",)
    assert interfaces_of(Attention) == ("AttentionLayer",)
    assert {interfaces_of(c) for c in (Rope, Rope2d, RopeMixed)} == {("Positional",)}


def test_rope_component_is_the_legacy_rope_flag():
    torch.manual_seed(0)
    flat = Transformer(32, 2, 4, kv_heads=2, rope=True, rope_theta=500.0, causal=True, mlp="swiglu",
                       norm="rmsnorm", hidden=40)
    comp = Transformer(32, 2, 4, kv_heads=2, causal=True, hidden=40, mlp=use("SwiGLU"), norm=use("RMSNorm"),
                       attn=use("Attention", pos=use("Rope", theta=500.0)))
    assert names(flat) == names(comp)
    comp.load_state_dict(flat.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(comp(x)[0], flat(x)[0], rtol=0, atol=0)
    assert comp.rope is None and isinstance(comp.layers[1].attn.pos, Rope)


@pytest.mark.parametrize(("string", "component"), [("gelu", use("MLP")), ("swiglu", use("SwiGLU")),
                                                   ("geglu", use("GeGLU"))])
def test_mlp_strings_are_the_components(string, component):
    torch.manual_seed(0)
    a = Transformer(32, 1, 2, mlp=string, mlp_ratio=3.0, multiple_of=16)
    b = Transformer(32, 1, 2, mlp=component, mlp_ratio=3.0, multiple_of=16)
    assert names(a) == names(b)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)


def test_component_arguments_win_over_the_hosts_context():
    t = Transformer(32, 2, 4, norm_eps=1e-6, qk_norm=True, mlp=use("SwiGLU", hidden=24), norm=use("RMSNorm", eps=1e-3),
                    attn=use("Attention", heads=2, qkv_bias=True))
    layer = t.layers[0]
    assert layer.mlp.w1.out_features == 24 and isinstance(layer.mlp, SwiGLU)
    assert isinstance(layer.norm1, RMSNorm) and layer.norm1.eps == 1e-3 and t.norm.eps == 1e-3
    assert layer.attn.head_dim == 16 and layer.attn.qkv.bias is not None  # heads 2 of the component, not 4
    assert isinstance(layer.attn.q_norm, RMSNorm) and layer.attn.q_norm.dim == 16  # qk norms: the Norm component


def test_moe_as_the_mlp_component_and_null_attention():
    t = Transformer(32, 2, 4, mlp=use("MoE", num_experts=3), attn=None, mlp_ratio=2.0, multiple_of=8)
    assert all(isinstance(layer.mlp, MoE) and layer.attn is None for layer in t.layers)
    assert t.layers[0].mlp.hidden == 48 and t.num_moe == 2
    out, aux, _ = t(torch.randn(2, 4, 32))
    assert out.shape == (2, 4, 32) and aux.item() > 0


def test_cross_attention_leaves_out_the_position_encoding():
    d = CrossAttentionDecoder(32, 2, 4, attn=use("Attention", pos=use("Rope2d")))
    assert isinstance(d.layers[0].attn.pos, Rope2d) and d.layers[0].cross_attn.pos is None
    assert d(torch.randn(2, 16, 32), torch.randn(2, 3, 32))[0].shape == (2, 16, 32)


# ---- Rope2d against a plain per-token, per-pair rotation ----------------------------------------------------

def rope2d_reference(x: torch.Tensor, h: int, w: int, prefix: int, theta: float) -> torch.Tensor:
    """Axial 2-D RoPE written out: token t >= prefix sits at (row, col) = divmod(t - prefix, w); pair i
    (channels i, i + hd/2) turns by col * f_i for i < hd/4, else by row * f_(i - hd/4), f_j = theta^(-j/(hd/4))."""
    b, n, heads, hd = x.shape
    out = x.clone().double()
    q = hd // 4
    for t in range(prefix, n):
        row, col = divmod(t - prefix, w)
        for i in range(hd // 2):
            angle = (col if i < q else row) * theta ** (-(i % q) / q)
            c, s = math.cos(angle), math.sin(angle)
            a, bb = x[:, t, :, i].double(), x[:, t, :, i + hd // 2].double()
            out[:, t, :, i], out[:, t, :, i + hd // 2] = a * c - bb * s, a * s + bb * c
    return out.float()


@pytest.mark.parametrize(("n", "grid", "prefix"), [(16, None, None), (21, None, None), (14, [3, 4], 2),
                                                   (12, [2, 6], None)])
def test_rope2d_matches_a_plain_implementation(n, grid, prefix):
    torch.manual_seed(0)
    rope = Rope2d(head_dim=8, theta=7.0, grid=grid, prefix=prefix)
    q, k = torch.randn(2, n, 3, 8), torch.randn(2, n, 3, 8)
    h, w, p = grid_of(n, grid, prefix)
    rq, rk = rope(q, k)
    torch.testing.assert_close(rq, rope2d_reference(q, h, w, p, 7.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, rope2d_reference(k, h, w, p, 7.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rq[:, :p], q[:, :p])  # cls / registers are not rotated


def scores_by_offset(pos, h: int, w: int, prefix: int, hd: int = 8, heads: int = 2, kv_heads: int | None = None):
    """q.k between every pair of grid tokens, the same q and k vectors at every position."""
    n = prefix + h * w
    q = torch.randn(1, 1, heads, hd).expand(1, n, heads, hd).contiguous()
    k = torch.randn(1, 1, kv_heads or heads, hd).expand(1, n, kv_heads or heads, hd).contiguous()
    rq, rk = pos(q, k)
    rk = rk.repeat_interleave(heads // (kv_heads or heads), dim=2)
    s = torch.einsum("bihd,bjhd->hij", rq, rk)
    by_offset: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(h * w):
        for j in range(h * w):
            (ri, ci), (rj, cj) = divmod(i, w), divmod(j, w)
            by_offset.setdefault((ri - rj, ci - cj), []).append(s[:, prefix + i, prefix + j])
    return by_offset


@pytest.mark.parametrize("pos", [Rope2d(head_dim=8, grid=[3, 4], prefix=1),
                                 RopeMixed(head_dim=8, heads=4, kv_heads=2, grid=[3, 4])],
                         ids=["Rope2d", "RopeMixed"])
def test_2d_rotations_are_relative(pos):
    """q.k depends only on the 2-D offset of the two tokens (for RopeMixed per head, under GQA too)."""
    torch.manual_seed(1)
    kv = getattr(pos, "kv_heads", None)
    groups = scores_by_offset(pos, 3, 4, prefix=1, heads=4, kv_heads=kv)
    assert len(groups) == 5 * 7
    distinct = {off: torch.stack(v) for off, v in groups.items()}
    for v in distinct.values():
        torch.testing.assert_close(v, v[:1].expand_as(v), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(distinct[(0, 1)][0], distinct[(1, 0)][0], atol=1e-3)  # rows and columns differ


def test_rope_mixed_learns_per_head_frequencies():
    torch.manual_seed(0)
    pos = RopeMixed(head_dim=8, heads=2)
    assert pos.freqs.shape == (2, 2, 4) and torch.isfinite(pos.freqs).all()
    assert not torch.allclose(pos.freqs[:, 0], pos.freqs[:, 1])  # a random direction per head
    q, k = torch.randn(2, 17, 2, 8), torch.randn(2, 17, 2, 8)
    rq, rk = pos(q, k)
    (rq * rk).sum().backward()
    assert pos.freqs.grad is not None and pos.freqs.grad.abs().sum() > 0


def test_grids_and_bad_grids():
    assert grid_of(17, None, None) == (4, 4, 1) and grid_of(20, None, None) == (4, 4, 4)
    assert grid_of(14, [3, 4], None) == (3, 4, 2)
    with pytest.raises(ValueError, match="grid"):
        grid_of(15, None, 2)
    with pytest.raises(ValueError, match="divisible by 4"):
        Rope2d(head_dim=6)


def test_meta_build_and_init_of_component_parameters():
    from l3m.model.init import check_initialised

    with torch.device("meta"):
        t = Transformer(32, 2, 4, attn=use("Attention", pos=use("RopeMixed")), mlp=use("GeGLU"))
    t.to_empty(device="cpu")
    check_initialised(t)  # every parameter and buffer (RopeMixed's freqs, Rope2d's table) is written
    assert names(t)[4] == ("layers.0.attn.pos.freqs", (2, 4, 4))


# ---- the builder's side: `ir.Call` values become Factories; failures name the component ----------------------

def span(col: int) -> Span:
    return Span("m.l3m", 3, col, 3, col + 5)


def test_calls_become_factories_with_positional_arguments_folded():
    call = Call("Attention", span(10), kwargs={"pos": Call("Rope2d", span(30), args=[8], kwargs={"theta": 50.0})})
    f = components(call)
    assert isinstance(f, Factory) and isinstance(f.get("pos"), Factory)
    assert f.get("pos").kwargs == {"head_dim": 8, "theta": 50.0}
    t = Transformer(32, 1, 4, attn=f)
    assert t.layers[0].attn.pos.theta == 50.0


def test_a_failing_component_is_named_with_its_span():
    call = Call("Attention", span(10), kwargs={"pos": Call("Rope2d", span(30))})
    with pytest.raises(ComponentFailure, match=r"component Rope2d at m.l3m:3:30: Rope2d needs head_dim divisible"):
        Transformer(24, 1, 4, attn=components(call))  # head_dim 6
    with pytest.raises(ComponentFailure, match="unknown component 'Nope'"):
        components(Call("Nope", span(1)))


def FakeCP(rank: int, size: int):  # noqa: N802 (it stands for a class)
    """A rank's place in a sequence split contiguously over `size` ranks (what l3m.dist.cp sets as `cp`;
    the zigzag layout is tested in tests/parallel/test_dist_cp_blocks.py)."""
    from l3m.dist.cp_layout import SequenceLayout

    return SequenceLayout(rank, size, "contiguous")


@pytest.mark.parametrize("make", [lambda: Rope(8), lambda: Rope2d(8), lambda: RopeMixed(8, heads=2)],
                         ids=["Rope", "Rope2d", "RopeMixed"])
def test_a_sequence_slice_is_rotated_at_its_global_positions(make):
    """Under context parallelism each rank rotates its slice as the whole sequence would be rotated; the
    parallelizer gives `cp` to the modules whose trait says "aware"."""
    from l3m.traits import context_parallel

    torch.manual_seed(0)
    pos = make()
    aware = [m for m in pos.modules() if context_parallel(m) == "aware"]
    assert aware and context_parallel(pos) in ("local", "aware")
    q, k = torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8)  # 20 tokens: 4 prefix + a 4x4 grid
    full_q, full_k = pos(q, k)
    parts = []
    for rank in range(2):
        for m in aware:
            m.cp = FakeCP(rank, 2)
        parts.append(pos(q[:, rank * 10:(rank + 1) * 10], k[:, rank * 10:(rank + 1) * 10]))
    torch.testing.assert_close(torch.cat([p[0] for p in parts], 1), full_q)
    torch.testing.assert_close(torch.cat([p[1] for p in parts], 1), full_k)

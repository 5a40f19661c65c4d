"""Static parameter names and shapes (l3m/dsl/shapes/params.py) equal the built blocks' own."""

from __future__ import annotations

import pytest
import torch
from helpers import EXAMPLES, SHIPPED

from l3m import registry
from l3m.dsl import compile_file
from l3m.dsl.shapes.params import count, known_blocks, static_params, weight_name

T = dict(dim=32, depth=2, heads=4)
CASES = [
    ("Linear", dict(in_features=8, out_features=5)),
    ("Linear", dict(in_features=8, out_features=5, bias=False)),
    ("LayerNorm", dict(dim=7)),
    ("LayerNorm", dict(dim=7, bias=False)),
    ("RMSNorm", dict(dim=7)),
    ("MLP", dict(dim=8, hidden=20)),
    ("MLP", dict(dim=8, hidden=20, out_dim=3, bias=False, glu=True, act="silu")),
    ("MoE", dict(dim=8, hidden=12, num_experts=3, top_k=2)),
    ("Transformer", T),
    ("Transformer", dict(T, mlp="swiglu", norm="rmsnorm", kv_heads=2, qk_norm=True, final_norm=False)),
    ("Transformer", dict(T, mlp="geglu", fused_qkv=False, qkv_bias=True, proj_bias=True, mlp_bias=True,
                         head_dim=16, multiple_of=64, rope=True)),
    ("Transformer", dict(T, depth=4, moe_every=2, num_experts=3, mlp_ratio=2.0)),
    ("Transformer", dict(T, attention=False, identity_attn=True, hidden=50)),
    ("Transformer", dict(T, attention=False, mlp="none", cross_attention=True, context_dim=12, fused_qkv=False)),
    ("Transformer", dict(T, cross_attention=True, qk_norm=True, norm="rmsnorm")),
    ("CrossAttentionDecoder", dict(T, context_dim=24)),
    ("PatchEmbed", dict(dim=16)),
    ("PatchEmbed", dict(dim=16, patch=4, in_chans=1, bias=False, norm="rmsnorm")),
    ("TokenEmbedding", dict(vocab=50, dim=8)),
    ("PosEmbed", dict(dim=8, num=16)),
    ("PosEmbed", dict(dim=8, num=16, kind="sincos2d")),
    ("PosEmbed", dict(dim=8, num=6, kind="sincos1d")),
    ("ClsToken", dict(dim=8)),
    ("ClsToken", dict(dim=8, num_registers=4)),
    ("Classifier", dict(dim=8, num_classes=10)),
    ("Classifier", dict(dim=8, num_classes=10, norm="layernorm", bias=False)),
    ("AttentionPoolClassifier", dict(dim=8, num_classes=10, heads=2, num_queries=3, norm="rmsnorm")),
    ("AttentionPool", dict(dim=8, heads=2, qkv_bias=True)),
    ("PixelDecoder", dict(dim=8, out_dim=48)),
    ("PixelDecoder", dict(dim=8, out_dim=48, hidden=16, depth=2, mlp="swiglu")),
    ("PixelDecoder", dict(dim=8, out_dim=48, hidden=16, depth=2, attention=True, heads=4, norm="rmsnorm")),
    ("ClipProjection", dict(in_dim=8, out_dim=4)),
    ("ClipProjection", dict(in_dim=8, out_dim=4, bias=True, learn_scale=False)),
    ("LMHead", dict(dim=8, vocab=30)),
    ("LMHead", dict(dim=8, vocab=30, bias=True)),
    ("Concat", {}), ("SelectTokens", dict(start=1)), ("ClsPool", {}), ("EosPool", dict(eos_id=2)),
    ("AvgPool", {}), ("CausalMask", {}), ("PrefixCausalMask", {}), ("PaddingMask", {}), ("DocumentMask", {}),
]


def live(name: str, args: dict) -> list[tuple[str, tuple[int, ...]]]:
    registry.load_builtins()  # the classes themselves, not the manifest lint reads
    with torch.device("meta"):
        module = registry.lookup(name).obj(**args)
    return [(n, tuple(p.shape)) for n, p in module.named_parameters()]


@pytest.mark.parametrize(("name", "args"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_static_params_equal_the_built_block(name, args):
    assert static_params(name, args) == live(name, args)


def _builtin(kind: str) -> set[str]:
    """The built-in entries of a kind (tests elsewhere register toy blocks in the same process)."""
    return {e.name for e in registry.entries(kind) if e.module.startswith("l3m.")}


def test_every_builtin_block_is_known_and_covered():
    assert set(known_blocks()) == _builtin("block")
    assert {n for n, _ in CASES} == _builtin("block")


def _shipped_calls():
    seen = {}
    for path in SHIPPED:
        compiled = compile_file(str(path))
        assert compiled.ok, path
        for node in compiled.program.nodes:
            if node.role in ("block", "loss", "metric"):
                entry = registry.lookup(node.call.type_name)
                args = node.call.kwargs_for(entry.signature)
                seen.setdefault((node.call.type_name, repr(sorted(args.items()))), (node.call.type_name, args))
    return list(seen.values())


def test_static_params_equal_every_shipped_block_loss_and_metric():
    calls = _shipped_calls()
    assert len(calls) > 40
    for name, args in calls:
        got = static_params(name, args)
        assert got is not None, name
        assert got == live(name, args), (name, args)


def test_unknown_blocks_and_unusable_arguments_give_none():
    assert static_params("NoSuchBlock", {}) is None
    assert static_params("Linear", {"in_features": "eight", "out_features": 5}) is None
    assert static_params("Transformer", dict(T, mlp="nonsense")) is None
    assert static_params("Transformer", dict(T, heads=0)) is None


def test_weight_name_and_count():
    head = static_params("LMHead", dict(dim=8, vocab=30))
    assert weight_name("LMHead", head) == "proj.weight"
    assert weight_name("TokenEmbedding", static_params("TokenEmbedding", dict(vocab=50, dim=8))) == "emb.weight"
    assert weight_name("Transformer", static_params("Transformer", T)) is None
    assert count(head) == 8 * 30


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_full_static_names_are_the_built_models(path):
    """`paramcheck.full_name` (what lint's globs match) names parameters as the built model does."""
    from l3m.dsl.paramcheck import model_params

    compiled = compile_file(str(path))
    registry.load_builtins()
    model = compiled.build_model()
    built = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    assert model_params(compiled.program).shapes == built


def test_builtin_losses_and_metrics_have_no_parameters():
    registry.load_builtins()
    names = _builtin("loss") | _builtin("metric")
    for name in sorted(names):
        required = {p.name: 4 for p in registry.lookup(name).signature.parameters.values() if p.default is p.empty}
        assert static_params(name, required) == live(name, required) == [], name

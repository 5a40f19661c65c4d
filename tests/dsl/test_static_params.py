"""Static parameter names and shapes (l3m/dsl/shapes/params.py) equal the built blocks' own."""

from __future__ import annotations

import pytest
import torch
from helpers import EXAMPLES, SHIPPED

from l3m import registry
from l3m.dsl import compile_file
from l3m.dsl.shapes.params import count, known_blocks, static_params, weight_name
from l3m.interfaces import use

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
    ("Latents", dict(num=4, dim=8)), ("InsertMaskTokens", dict(dim=8)), ("KeepVisible", {}), ("Add", {}),
    ("Mul", {}), ("Activation", {}), ("Reshape", dict(pattern="B N C -> B C N")), ("Transpose", {}), ("Permute", dict(dims=[1, 0])),
    ("Flatten", {}), ("Split", dict(sizes=[1, 2])),
    ("Conv2d", dict(in_channels=3, out_channels=8)),
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel=[3, 1], groups=2, bias=False)),
    ("BatchNorm", dict(channels=5)), ("BatchNorm", dict(channels=5, affine=False)),
    ("GroupNorm", dict(groups=2, channels=6)), ("GroupNorm", dict(groups=2, channels=6, affine=False)),
    ("MaxPool2d", {}), ("AvgPool2d", dict(kernel=3)), ("GlobalAvgPool", {}),
    ("Transformer", dict(T, depth=3, share_layers=True)),
    # components (issue #17): the Python API's `use(...)`, as the builder's Factories would be
    ("SwiGLU", dict(dim=8)), ("GeGLU", dict(dim=8, hidden=12, out_dim=3, bias=True)), ("MLP", dict(dim=8, glu=True)),
    ("MoE", dict(dim=8, mlp_ratio=2.0, multiple_of=8)),
    ("Attention", dict(dim=16, heads=2)),
    ("Attention", dict(dim=16, heads=4, kv_heads=2, qk_norm=True, norm=use("RMSNorm"), pos=use("RopeMixed"))),
    ("Attention", dict(dim=16, heads=2, cross=True, context_dim=6, fused_qkv=False, pos=use("RopeMixed"))),
    ("Transformer", dict(T, mlp=use("SwiGLU", multiple_of=16), norm=use("RMSNorm"),
                         attn=use("Attention", pos=use("RopeMixed")))),
    ("Transformer", dict(T, kv_heads=2, qkv_bias=True, attn=use("Attention", heads=2, pos=use("RopeMixed")),
                         cross_attention=True, norm=use("LayerNorm", bias=False), qk_norm=True)),
    ("Transformer", dict(T, attn=None, mlp=use("MoE", num_experts=2), hidden=24)),
    ("Transformer", dict(T, attn=use("Attention", pos=use("Rope2d")), mlp=use("GeGLU", hidden=40), moe_every=2)),
    ("CrossAttentionDecoder", dict(T, attn=use("Attention", head_dim=4, pos=use("Rope")), mlp="swiglu")),
    # fine-tuning parts (blocks/peft.py): LoRA'd projections, bottleneck adapters
    ("Adapter", dict(dim=8, hidden=4)),
    ("Attention", dict(dim=16, heads=4, kv_heads=2, qkv_bias=True, lora=use("Lora", rank=2, k=False))),
    ("Attention", dict(dim=16, heads=2, cross=True, context_dim=6, lora=use("Lora", rank=3, proj=False))),
    ("Transformer", dict(T, fused_qkv=False, adapter=use("Adapter", hidden=5),
                         attn=use("Attention", lora=use("Lora", q=False)))),
    ("CrossAttentionDecoder", dict(T, context_dim=24, adapter=use("Adapter"), attn=use("Attention", lora=use("Lora")))),
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


def test_component_values_as_lint_holds_them():
    """Lint passes components as `sigparams.ComponentArgs` (defaults filled in): only the arguments the call
    wrote win over the host's context (qkv_bias = false here beats the trunk's true)."""
    from l3m.dsl.ir import Call, Span
    from l3m.dsl.sigparams import component_args

    at = Span("m.l3m", 1, 1, 1, 2)
    attn = Call("Attention", at, kwargs={"qkv_bias": False, "pos": Call("RopeMixed", at, kwargs={"theta": 5.0})})
    args = dict(T, qkv_bias=True, proj_bias=True, attn=attn, mlp=Call("SwiGLU", at, kwargs={"hidden": 8}))
    lint_args = {k: component_args(v) for k, v in args.items()}
    names = [n for n, _ in static_params("Transformer", lint_args)]
    assert "layers.0.attn.qkv.bias" not in names and "layers.0.attn.proj.bias" in names
    assert static_params("Transformer", lint_args) == static_params("Transformer", args) == live("Transformer", args)

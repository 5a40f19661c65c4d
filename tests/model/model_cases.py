"""One small configuration of every registered block, with inputs, for the block tests.

`test_every_block_has_a_case` fails when a block is registered without a case here, so a new
block cannot skip the meta-device and gradient tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from l3m.interfaces import use

D = 16  # model width used throughout


@dataclass
class Case:
    name: str  # registry name
    kwargs: dict[str, Any]
    inputs: Callable[[], tuple]  # positional inputs, fresh each call
    shapes: tuple  # expected shape of each output (None: the output is None)
    kw_inputs: Callable[[], dict] = field(default=lambda: {})

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


def x(n: int = 5, d: int = D) -> torch.Tensor:
    return torch.randn(2, n, d)


def tokens(n: int = 6, vocab: int = 11) -> torch.Tensor:
    t = torch.randint(3, vocab, (2, n))
    t[0, 2] = 2  # an eos for EosPool / DocumentMask
    t[1, -1] = 0  # a pad for PaddingMask
    return t


def masked(n: int, k: int) -> torch.Tensor:
    """A RandomMask-like bool [2, n]: k random positions masked (True) in each sample."""
    order = torch.rand(2, n).argsort(dim=1)
    return torch.zeros(2, n, dtype=torch.bool).scatter(1, order[:, :k], True)


def visible_ids(n: int, k: int) -> torch.Tensor:
    """RandomMask's second output: the n - k visible positions of each sample, in increasing order."""
    return (~masked(n, k)).nonzero()[:, 1].reshape(2, n - k)


T = dict(dim=D, depth=2, heads=2)
CASES: list[Case] = [
    Case("PatchEmbed", dict(dim=D, patch=4, in_chans=3), lambda: (torch.randn(2, 3, 8, 8),), ((2, 4, D),)),
    Case("PatchEmbed", dict(dim=D, patch=4, in_chans=1, norm="layernorm"), lambda: (torch.randn(2, 1, 8, 12),), ((2, 6, D),)),
    Case("TokenEmbedding", dict(vocab=11, dim=D), lambda: (tokens(),), ((2, 6, D),)),
    Case("PosEmbed", dict(dim=D, num=4), lambda: (x(4),), ((2, 4, D),)),
    Case("PosEmbed", dict(dim=D, num=6, kind="sincos1d", offset=1), lambda: (x(5),), ((2, 5, D),)),
    Case("PosEmbed", dict(dim=D, num=6, kind="sincos2d", grid=[2, 3]), lambda: (x(6),), ((2, 6, D),)),
    Case("ClsToken", dict(dim=D, num_registers=2), lambda: (x(4),), ((2, 7, D),)),
    Case("Concat", {}, lambda: (x(3), x(2)), ((2, 5, D),)),
    Case("Linear", dict(in_features=D, out_features=8, init="xavier_uniform"), lambda: (x(),), ((2, 5, 8),)),
    Case("CausalMask", {}, lambda: (x(),), ((2, 1, 5, 5),)),
    Case("PrefixCausalMask", dict(offset=1), lambda: (x(), torch.tensor([2, 0])), ((2, 1, 5, 5),)),
    Case("PaddingMask", dict(pad_id=0), lambda: (tokens(),), ((2, 1, 6, 6),)),
    Case("DocumentMask", dict(eos_id=2), lambda: (tokens(),), ((2, 1, 6, 6),)),
    Case("LayerNorm", dict(dim=D, fp32=True), lambda: (x(),), ((2, 5, D),)),
    Case("RMSNorm", dict(dim=D), lambda: (x(),), ((2, 5, D),)),
    Case("MLP", dict(dim=D, hidden=32, out_dim=8, act="silu", glu=True), lambda: (x(),), ((2, 5, 8),)),
    Case("MoE", dict(dim=D, hidden=32, num_experts=2, top_k=2), lambda: (x(),), ((2, 5, D), ())),
    Case("MoE", dict(dim=D, hidden=32, num_experts=2, top_k=2, capacity_factor=2.0), lambda: (x(),), ((2, 5, D), ())),
    Case("SwiGLU", dict(dim=D, multiple_of=8), lambda: (x(),), ((2, 5, D),)),
    Case("GeGLU", dict(dim=D, hidden=24, out_dim=8, bias=True), lambda: (x(),), ((2, 5, 8),)),
    Case("Attention", dict(dim=D, heads=2, causal=True, pos=use("Rope")), lambda: (x(),), ((2, 5, D),)),
    Case("Attention", dict(dim=D, heads=4, kv_heads=2, pos=use("RopeMixed", grid=[2, 2], prefix=1)),
         lambda: (x(),), ((2, 5, D),)),
    Case("Attention", dict(dim=D, heads=2, cross=True, context_dim=8), lambda: (x(),), ((2, 5, D),),
         kw_inputs=lambda: {"context": torch.randn(2, 3, 8)}),
    Case("Transformer", dict(T), lambda: (x(),), ((2, 5, D), (), None)),
    # fine-tuning parts (blocks/peft.py)
    Case("Adapter", dict(dim=D, hidden=4), lambda: (x(),), ((2, 5, D),)),
    Case("Attention", dict(dim=D, heads=4, kv_heads=2, lora=use("Lora", rank=2, v=False)), lambda: (x(),), ((2, 5, D),)),
    Case("Transformer", dict(T, adapter=use("Adapter", hidden=4), attn=use("Attention", lora=use("Lora"))),
         lambda: (x(),), ((2, 5, D), (), None)),
    Case(
        "Transformer",
        dict(T, kv_heads=1, mlp="swiglu", hidden=24, norm="rmsnorm", qk_norm=True, rope=True, causal=True,
             fused_qkv=False, qkv_bias=True, proj_bias=True, mlp_bias=True, init="fan_in_depth", return_hidden=2),
        lambda: (x(),),
        ((2, 5, D), (), (2, 5, D)),
    ),  # fmt: skip
    Case(
        "Transformer",
        dict(T, mlp=use("SwiGLU", hidden=24), norm=use("RMSNorm"), attn=use("Attention", pos=use("Rope2d"))),
        lambda: (x(),),
        ((2, 5, D), (), None),
    ),
    Case(
        "Transformer",
        dict(T, mlp="geglu", hidden=24, moe_every=1, num_experts=2, top_k=2, init="xavier_uniform", norm_fp32=True),
        lambda: (x(),),
        ((2, 5, D), (), None),
    ),
    Case("Transformer", dict(T, attention=False, drop_path=0.1, init="normal"), lambda: (x(),), ((2, 5, D), (), None)),
    Case("Transformer", dict(T, mlp="none", final_norm=False), lambda: (x(),), ((2, 5, D), (), None)),
    Case(
        "Transformer",
        dict(T, cross_attention=True, context_dim=8, causal=True),
        lambda: (x(),),
        ((2, 5, D), (), None),
        kw_inputs=lambda: {"context": torch.randn(2, 3, 8), "mask": torch.ones(2, 1, 5, 5, dtype=torch.bool)},
    ),
    Case(
        "CrossAttentionDecoder",
        dict(T, context_dim=8, causal=True, kv_heads=1, fused_qkv=False),
        lambda: (x(), torch.randn(2, 3, 8)),
        ((2, 5, D), (), None),
    ),
    Case("SelectTokens", dict(start=1, end=3), lambda: (x(),), ((2, 2, D),)),
    Case("ClsPool", {}, lambda: (x(),), ((2, D),)),
    Case("EosPool", dict(eos_id=2), lambda: (x(6), tokens()), ((2, D),)),
    Case("AvgPool", dict(start=1), lambda: (x(),), ((2, D),)),
    Case("AttentionPool", dict(dim=D, heads=2, num_queries=2), lambda: (x(),), ((2, D),)),
    Case("Classifier", dict(dim=D, num_classes=5, norm="layernorm"), lambda: (x(1)[:, 0],), ((2, 5),)),
    Case("Classifier", dict(dim=D, num_classes=5, norm="rmsnorm", bias=False), lambda: (x(),), ((2, 5, 5),)),
    Case("AttentionPoolClassifier", dict(dim=D, num_classes=5, heads=2, norm="layernorm"), lambda: (x(),), ((2, 5),)),
    Case("PixelDecoder", dict(dim=D, out_dim=48), lambda: (x(),), ((2, 5, 48),)),
    Case("PixelDecoder", dict(dim=D, out_dim=48, hidden=8, depth=1, heads=2, mlp="swiglu"), lambda: (x(),), ((2, 5, 48),)),
    Case(
        "PixelDecoder",
        dict(dim=D, out_dim=48, hidden=8, depth=2, heads=2, attention=True, rope=True),
        lambda: (x(),),
        ((2, 5, 48),),
    ),
    Case("ClipProjection", dict(in_dim=D, out_dim=8), lambda: (x(1)[:, 0],), ((2, 8), ())),
    Case("ClipProjection", dict(in_dim=D, out_dim=8, learn_scale=False), lambda: (x(1)[:, 0],), ((2, 8), None)),
    Case("LMHead", dict(dim=D, vocab=11), lambda: (x(),), ((2, 5, 11),)),
    # the general tensor blocks (elementwise.py, reshape.py, tokens.py)
    Case("Add", {}, lambda: (x(), x(), torch.randn(D)), ((2, 5, D),)),
    Case("Mul", {}, lambda: (x(), torch.randn(2, 1, D)), ((2, 5, D),)),
    Case("Activation", dict(fn="silu"), lambda: (x(),), ((2, 5, D),)),
    Case("Concat", dict(axis=-1), lambda: (x(), x(d=4)), ((2, 5, D + 4),)),
    Case("Reshape", dict(pattern="B (H W) C -> B C H W", H=2), lambda: (x(6),), ((2, D, 2, 3),)),
    Case("Transpose", {}, lambda: (x(),), ((2, D, 5),)),
    Case("Permute", dict(dims=[2, 0, 1]), lambda: (x(),), ((D, 2, 5),)),
    Case("Flatten", {}, lambda: (x(),), ((2, 5 * D),)),
    Case("Split", dict(sizes=[1, -1], axis=1), lambda: (x(),), ((2, 1, D), (2, 4, D)) + (None,) * 6),
    Case("Latents", dict(num=3, dim=D), lambda: (tokens(),), ((2, 3, D),)),  # the input gives only the batch size
    Case("KeepVisible", dict(offset=1), lambda: (x(9), visible_ids(8, 6)), ((2, 3, D),)),
    Case("KeepVisible", {}, lambda: (x(8),), ((2, 2, D),), kw_inputs=lambda: {"mask": masked(8, 6)}),
    Case("InsertMaskTokens", dict(dim=D), lambda: (x(2), masked(8, 6)), ((2, 8, D),)),
    # the convolutional blocks (conv.py)
    Case("Conv2d", dict(in_channels=3, out_channels=4), lambda: (torch.randn(2, 3, 8, 8),), ((2, 4, 6, 6),)),
    Case("Conv2d", dict(in_channels=4, out_channels=6, kernel=[3, 1], stride=2, padding=1, groups=2,
                        bias=False, init="pytorch"), lambda: (torch.randn(2, 4, 8, 8),), ((2, 6, 4, 5),)),
    Case("BatchNorm", dict(channels=4), lambda: (torch.randn(3, 4, 5, 5),), ((3, 4, 5, 5),)),
    Case("GroupNorm", dict(groups=2, channels=4), lambda: (torch.randn(2, 4, 3, 3),), ((2, 4, 3, 3),)),
    Case("MaxPool2d", dict(kernel=2), lambda: (torch.randn(2, 3, 8, 7),), ((2, 3, 4, 3),)),
    Case("AvgPool2d", dict(kernel=3, stride=1, padding=1), lambda: (torch.randn(2, 3, 5, 5),), ((2, 3, 5, 5),)),
    Case("GlobalAvgPool", {}, lambda: (torch.randn(2, 3, 4, 4),), ((2, 3),)),
    Case("Transformer", dict(T, depth=3, share_layers=True), lambda: (x(),), ((2, 5, D), (), None)),
]


def as_tuple(out: Any) -> tuple:
    return out if isinstance(out, tuple) else (out,)

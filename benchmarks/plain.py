"""Hand-written PyTorch twins of the GPT and ViT examples: the baseline the overhead benchmark
holds l3m against.

Plain PyTorch on purpose: `nn.Embedding`, `nn.Conv2d`, `nn.LayerNorm`, `nn.Linear` and
`F.scaled_dot_product_attention`, their own attention and MLP code, no l3m import. The
architecture (and so the arithmetic) is the examples' own, so that an l3m model's weights
load into a twin (`from_l3m` renames them and reorders the fused qkv rows, nothing else)
and both compute the same outputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: nn.Module, eps: float, qkv_bias: bool, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, qkv_bias, causal)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def sincos_table(n: int, dim: int) -> torch.Tensor:
    """`[n, dim]`: the original LLM's table, a 2-D sin-cos table on an `[n, 1]` grid: the first half
    encodes the (always zero) column, [sin 0 | cos 0], the second half the position, [sin | cos]."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None]
    column = torch.cat([torch.zeros(n, quarter), torch.ones(n, quarter)], dim=1).double()
    return torch.cat([column, angles.sin(), angles.cos()], dim=1).float()


class GPT(nn.Module):
    """Decoder-only LM: token embedding + fixed sin-cos positions, pre-norm causal blocks with
    SwiGLU, final LayerNorm, untied head."""

    def __init__(self, vocab: int, context: int, dim: int, depth: int, heads: int, hidden: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.register_buffer("pos", sincos_table(context, dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, heads, SwiGLU(dim, hidden), 1e-5, qkv_bias=False, causal=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class ViT(nn.Module):
    """Supervised ViT: conv patches, cls token, learned positions, pre-norm blocks with a GELU
    MLP, final LayerNorm, the cls token through a LayerNorm + linear classifier."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image_size: int, num_classes: int):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, GeluMLP(dim, 4 * dim), 1e-6, qkv_bias=True, causal=False) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.head_norm(self.norm(x)[:, 0]))


# -- l3m weights -> twin weights ----------------------------------------------------------------

_RENAMES = [  # on names without the `.block` segment that older MetaModels put after each block
    (r"preprocessor\.embed\.emb\.", "tok."),
    (r"preprocessor\.patches\.", "patch."),
    (r"preprocessor\.cls\.cls", "cls"),
    (r"preprocessor\.pos\.pos", "pos"),
    (r"trunk\.blocks\.layers\.(\d+)\.norm1\.", r"blocks.\1.ln1."),
    (r"trunk\.blocks\.layers\.(\d+)\.norm2\.", r"blocks.\1.ln2."),
    (r"trunk\.blocks\.layers\.(\d+)\.attn\.", r"blocks.\1.attn."),
    (r"trunk\.blocks\.layers\.(\d+)\.mlp\.w1\.", r"blocks.\1.mlp.W1."),
    (r"trunk\.blocks\.layers\.(\d+)\.mlp\.w3\.", r"blocks.\1.mlp.up."),
    (r"trunk\.blocks\.layers\.(\d+)\.mlp\.w2\.", r"blocks.\1.mlp.W2."),
    (r"trunk\.blocks\.norm\.", "norm."),
    (r"head\.lm\.proj\.", "head."),
    (r"head\.fc\.norm\.", "head_norm."),
    (r"head\.fc\.fc\.", "head."),
]
_BLOCK_SEGMENT = re.compile(r"^((?:preprocessor|trunk|postprocessor|head)\.\w+)\.block\.")
_ROOT_MODEL = re.compile(r"^\w+\.(?=(?:preprocessor|trunk|postprocessor|head)\.)")  # `gpt.` in `gpt.trunk.blocks...`


def from_l3m(state: Mapping[str, torch.Tensor], twin: nn.Module, heads: int) -> dict[str, torch.Tensor]:
    """The l3m model's state dict under the twin's names and layouts.

    l3m's fused qkv keeps each head's q, k, v rows together (`[head, 3, head_dim]`); the twin
    uses the common `[3, head, head_dim]`, so those rows are reordered; separate q, k, v are stacked.
    """
    glu = any(isinstance(m, SwiGLU) for m in twin.modules())
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        new = _BLOCK_SEGMENT.sub(r"\1.", _ROOT_MODEL.sub("", name))
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        new = new.replace("mlp.W1.", "mlp.gate." if glu else "mlp.fc1.").replace(
            "mlp.W2.", "mlp.down." if glu else "mlp.fc2.")
        if new.endswith("attn.qkv.weight") or new.endswith("attn.qkv.bias"):
            rows = t.shape[0]
            t = t.reshape(heads, 3, rows // (3 * heads), *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        out[new] = t.detach().clone()
    for name in [n for n in out if re.search(r"attn\.q\.(weight|bias)$", n)]:  # separate q, k, v: stack
        parts = [out.pop(name.replace(".q.", f".{x}.")) for x in "qkv"]
        out[name.replace(".q.", ".qkv.")] = torch.cat(parts, dim=0)
    return out

"""Preprocessors that turn raw inputs into tokens, and positional information.

Fixed tables (sin-cos positions, RoPE frequencies) are non-persistent buffers recomputed in
`init_weights`, so they are right after a meta-device build and never bloat checkpoints.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from l3m.model.blocks.norms import make_norm
from l3m.model.init import InitStyle, check_style, init_weight_
from l3m.registry import register


def sincos_1d(dim: int, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """`[len(positions), dim]`: first half sin(p * w_i), second half cos(p * w_i), w_i = base^(-i/(dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embeddings need an even dim, got {dim}")
    half = dim // 2
    omega = 1.0 / base ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, height: int, width: int, base: float = 10000.0) -> torch.Tensor:
    """`[height*width, dim]` in raster order: first half encodes the column, second half the row,
    each half [sin | cos] (MAE's and ml-l3m's layout, which pretrained AIM weights assume)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need dim divisible by 4, got {dim}")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    return torch.cat([sincos_1d(dim // 2, cols, base), sincos_1d(dim // 2, rows, base)], dim=1)


def _table_init(init: str) -> str:
    """Learned tokens/positions: "trunc_normal" (cut at 2 std) or "normal" (as ml-l3m's `normal_(std=0.02)`)."""
    if init not in ("trunc_normal", "normal"):
        raise ValueError(f"unknown init {init!r}; expected trunc_normal or normal")
    return init


@register("block")
class PatchEmbed(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to `dim` (raster order)."""

    outputs = ("x",)
    shapes = "image: float[B, in_chans, H, W] -> x: float[B, (H // patch) * (W // patch), dim]"
    checks = (
        ("patch >= 1", "patch ({patch}) must be at least 1"),
        ("H % patch == 0 and W % patch == 0", "the image ({H}x{W}) does not divide into patches of {patch}x{patch}"),
    )

    def __init__(
        self,
        dim: int,
        patch: int = 16,
        in_chans: int = 3,
        bias: bool = True,
        norm: Literal["none", "layernorm", "rmsnorm"] = "none",
        norm_eps: float = 1e-6,
        init: InitStyle = "xavier_uniform",
        init_std: float = 0.02,
        bias_init: Literal["zeros", "uniform"] = "zeros",
    ):
        super().__init__()
        if bias_init not in ("zeros", "uniform"):
            raise ValueError(f"unknown bias_init {bias_init!r}; expected zeros or uniform")
        self.dim, self.patch, self.in_chans = dim, patch, in_chans
        self.init, self.init_std, self.bias_init = check_style(init), init_std, bias_init
        self.weight = nn.Parameter(torch.empty(dim, in_chans, patch, patch))
        self.bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.norm = make_norm(norm, dim, eps=norm_eps)
        self.init_weights()

    def init_weights(self) -> None:
        # As a linear map of the flattened patch (fan_in = C*p*p), not as a convolution.
        init_weight_(self.weight.view(self.dim, -1), self.init, std=self.init_std)
        if self.bias is not None:
            with torch.no_grad():
                if self.bias_init == "uniform":  # nn.Conv2d's own default, U(+-1/sqrt(fan_in)), kept by ml-l3m
                    bound = 1.0 / math.sqrt(self.in_chans * self.patch * self.patch)
                    self.bias.uniform_(-bound, bound)
                else:
                    self.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, _, h, w = image.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch}")
        x = F.conv2d(image, self.weight, self.bias, stride=self.patch)
        return self.norm(x.flatten(2).transpose(1, 2))


class Embedding(nn.Embedding):
    """An `nn.Embedding` (so RowwiseParallel accepts it) with its own init."""

    def __init__(self, num: int, dim: int, init_std: float = 0.02, init: Literal["normal", "uniform"] = "normal",
                 init_bound: float = 0.1):
        super().__init__(num, dim)
        if init not in ("normal", "uniform"):
            raise ValueError(f"unknown init {init!r}; expected normal or uniform")
        self.init_std, self.init, self.init_bound = init_std, init, init_bound
        self.init_weights()

    def init_weights(self) -> None:
        if self.init == "uniform":  # U(-init_bound, init_bound), as ml-l3m's LLM (init_style: uniform, 0.1)
            with torch.no_grad():
                self.weight.uniform_(-self.init_bound, self.init_bound)
        else:
            init_weight_(self.weight, "normal", std=self.init_std)


@register("block")
class TokenEmbedding(nn.Module):
    """Token ids `[B, N]` to vectors `[B, N, dim]`; `.weight` is what an LMHead may tie to."""

    outputs = ("x",)
    context_parallel = "local"  # trait (l3m.traits): runs on a slice of the sequence as it is
    shapes = "tokens: long[...] < vocab -> x: float[..., dim]"

    def __init__(self, vocab: int, dim: int, init_std: float = 0.02, init: Literal["normal", "uniform"] = "normal",
                 init_bound: float = 0.1):
        super().__init__()
        self.emb = Embedding(vocab, dim, init_std=init_std, init=init, init_bound=init_bound)

    @property
    def weight(self) -> nn.Parameter:
        return self.emb.weight

    def tp_plan(self) -> dict[str, str]:
        return {"emb": "rowwise_embedding"}  # l3m.dist.tp_styles

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb(tokens)


@register("block")
class PosEmbed(nn.Module):
    """Adds `num` position vectors to tokens `offset .. offset+num` (earlier tokens, e.g. a cls
    token, are left alone; a shorter sequence gets the first positions).

    "learned" is a parameter; "sincos1d" / "sincos2d" are frozen tables. `grid` is `[h, w]`
    for "sincos2d" (default: a square of `num`).
    """

    outputs = ("x",)
    fixed_tables = property(lambda self: () if self.kind == "learned" else ("pos",))  # trait: frozen tables
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence
    shapes = "x: float[B, N, dim] -> x: float[B, N, dim]"
    checks = (
        ("num + offset >= N", "the position table (num = {num}, from offset {offset}) is shorter than the {N} "
         "tokens it is added to (a cls token not counted?)"),
        ("offset <= N", "offset ({offset}) is past the {N} tokens it is added to"),
        ("dim % 2 == 0 or kind != 'sincos1d'", "kind = sincos1d needs an even dim, not {dim}"),
        ("dim % 4 == 0 or kind != 'sincos2d'", "kind = sincos2d needs a dim divisible by 4, not {dim}"),
        ("len(grid) == 2 and min(grid) * max(grid) == num or kind != 'sincos2d'",
         "grid ({grid}) must be [h, w] with h * w = num ({num})"),
    )
    cp = None  # under context parallelism (l3m.dist.cp), x is one rank's slice of the sequence

    def __init__(
        self,
        dim: int,
        num: int,
        kind: Literal["learned", "sincos1d", "sincos2d"] = "learned",
        grid: list[int] | None = None,
        offset: int = 0,
        init_std: float = 0.02,
        init: Literal["trunc_normal", "normal"] = "trunc_normal",
    ):
        super().__init__()
        self.dim, self.num, self.kind, self.offset, self.init_std = dim, num, kind, offset, init_std
        self.init = _table_init(init)
        if kind == "sincos2d":
            if grid is None:
                side = math.isqrt(num)
                if side * side != num:
                    raise ValueError(f"sincos2d needs grid=[h, w] when num={num} is not a square")
                grid = [side, side]
            if len(grid) != 2 or grid[0] * grid[1] != num:
                raise ValueError(f"grid {grid} does not have num={num} cells")
        self.grid = list(grid) if grid is not None else None
        if kind == "learned":
            self.pos = nn.Parameter(torch.empty(1, num, dim))
        elif kind in ("sincos1d", "sincos2d"):
            self.register_buffer("pos", torch.empty(1, num, dim), persistent=False)
        else:
            raise ValueError(f"unknown position embedding kind {kind!r}")
        self.init_weights()

    def table(self) -> torch.Tensor:
        if self.kind == "sincos1d":
            return sincos_1d(self.dim, torch.arange(self.num))
        return sincos_2d(self.dim, self.grid[0], self.grid[1])

    def init_weights(self) -> None:
        with torch.no_grad():
            if self.kind == "learned":
                init_weight_(self.pos, self.init, std=self.init_std)
            else:
                self.pos.copy_(self.table()[None].to(self.pos.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cp is not None:  # the table rows of this slice's global positions
            idx = self.cp.positions(x.shape[1], x.device) - self.offset
            keep = ((idx >= 0) & (idx < self.num)).to(x.dtype)[None, :, None]
            return x + self.pos[:, idx.clamp(0, self.num - 1)].to(x.dtype) * keep
        n = min(self.num, x.shape[1] - self.offset)
        pos = (self.pos if n == self.num else self.pos[:, :n]).to(x.dtype)  # no slice op when whole
        if self.offset == 0 and n == x.shape[1]:
            return x + pos
        a, b = self.offset, self.offset + n
        return torch.cat([x[:, :a], x[:, a:b] + pos, x[:, b:]], dim=1)


@register("block")
class ClsToken(nn.Module):
    """Prepends a learned cls token and `num_registers` register tokens: `[cls, regs..., x]`."""

    outputs = ("x",)
    shapes = "x: float[B, N, dim] -> x: float[B, N + 1 + num_registers, dim]"

    def __init__(self, dim: int, num_registers: int = 0, init_std: float = 0.02,
                 init: Literal["trunc_normal", "normal"] = "trunc_normal"):
        super().__init__()
        self.init_std, self.init = init_std, _table_init(init)
        self.cls = nn.Parameter(torch.empty(1, 1, dim))
        self.registers = nn.Parameter(torch.empty(1, num_registers, dim)) if num_registers else None
        self.init_weights()

    def init_weights(self) -> None:
        init_weight_(self.cls, self.init, std=self.init_std)
        if self.registers is not None:
            init_weight_(self.registers, self.init, std=self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        parts = [self.cls.expand(b, -1, -1).to(x.dtype)]
        if self.registers is not None:
            parts.append(self.registers.expand(b, -1, -1).to(x.dtype))
        return torch.cat(parts + [x], dim=1)


class RotaryEmbedding(nn.Module):
    """RoPE frequencies for one head size; `forward(n)` gives the cos/sin tables of n positions.

    Pairs are (i, i + head_dim/2) ("rotate half"): channel pair i turns by angle p * theta^(-2i/head_dim).
    `scaling = [factor, low_freq_factor, high_freq_factor, original_context]` stretches the long
    wavelengths as Llama 3.1+ does to extend its context (pretrained weights depend on it).
    Under context parallelism (`cp` set by l3m.dist.cp) the n positions are this rank's (`cp.positions`).
    """

    cp = None
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: list[float] | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        if scaling is not None and (len(scaling) != 4 or scaling[1] >= scaling[2]):
            raise ValueError(f"rope scaling is [factor, low_freq_factor, high_freq_factor, original_context] "
                             f"with low < high, got {scaling}")
        self.head_dim, self.theta = head_dim, theta
        self.scaling = [float(s) for s in scaling] if scaling is not None else None
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        inv_freq = 1.0 / self.theta**exponent
        if self.scaling is not None:
            factor, low, high, context = self.scaling
            wavelen = 2 * math.pi / inv_freq
            # 0 for wavelengths beyond context/low (divided by factor), 1 below context/high (kept).
            keep = ((context / wavelen - low) / (high - low)).clamp(0.0, 1.0)
            inv_freq = (1 - keep) * inv_freq / factor + keep * inv_freq
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq.to(self.inv_freq.dtype))

    def forward(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.inv_freq.device
        pos = (torch.arange(n, device=device) if self.cp is None else self.cp.positions(n, device)).float()
        angles = pos[:, None] * self.inv_freq.float()[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates `x` `[B, N, H, head_dim]` by the tables `[N, head_dim]` (computed in float32), or by
    per-sequence tables `[B, N, head_dim]` (generation: left-padded prompts start at their own 0)."""
    c, s = (cos[None, :, None, :], sin[None, :, None, :]) if cos.dim() == 2 else (cos[:, :, None], sin[:, :, None])
    return turn_halves(x, c, s)


def turn_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` in float32, with tables that broadcast against `x`. Written
    per half, `[x1 c - x2 s, x2 c + x1 s]` (the tables' two halves are equal), so that neither the
    rotated copy of `x` nor its negation is ever materialised: a compiled step makes one pass over
    `x` instead of three (1.6x less time for the rotation, forward and backward)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    h = cos.shape[-1] // 2
    c, s = cos[..., :h], sin[..., :h]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).type_as(x)

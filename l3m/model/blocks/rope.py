"""Rotary position encodings as components of attention (`Attention(pos = Rope2d())`).

Each is built by its host attention with `head_dim` (and `heads`, `kv_heads`) and rotates the
queries and keys `[B, N, H, hd]` in `forward(q, k)`. All use the "rotate half" pairing of
`apply_rope`: channel i turns with channel i + hd/2, so q.k depends only on the offset between
the two tokens' positions.

- `Rope`: 1-D positions (text); the same tables as a Transformer's `rope = true`.
- `Rope2d`: axial 2-D RoPE for image tokens: the first half of the pairs turn with the column, the
  second half with the row. Tokens before the grid (cls, registers) are not rotated.
- `RopeMixed`: RoPE-Mixed (Heo et al. 2024, "Rotary Position Embedding for Vision Transformer"):
  each pair turns by `x * fx + y * fy` with learnable per-head frequencies (fx, fy).

The grid is `grid = [h, w]` with `prefix` tokens before it, or inferred from the token count N:
the largest square s*s <= N with the N - s*s leading tokens as the prefix (cls + registers).
Under context parallelism (`cp` set by l3m.dist.cp) positions are this rank's global ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from l3m.interfaces import Positional
from l3m.model.blocks.embeddings import RotaryEmbedding, apply_rope, turn_halves
from l3m.registry import register


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x` `[B, N, H, hd]` turned by tables `[N, hd]` (every head alike) or `[N, H, hd]` (per head)."""
    if cos.dim() == 2:
        return apply_rope(x, cos, sin)
    return turn_halves(x, cos[None], sin[None])


def grid_of(n: int, grid: list[int] | None, prefix: int | None) -> tuple[int, int, int]:
    """`(h, w, prefix)` for a sequence of n tokens (see the module docstring)."""
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        p = n - h * w if prefix is None else prefix
    else:
        p = prefix if prefix is not None else n - math.isqrt(n) ** 2
        side = math.isqrt(max(n - p, 0))
        h = w = side
    if p < 0 or p + h * w != n:
        raise ValueError(f"{n} tokens are not {p if p >= 0 else 0} prefix tokens and a {h}x{w} grid"
                         + ("" if grid is not None else "; give grid = [h, w] and prefix"))
    return h, w, p


def coords(n: int, start: int | torch.Tensor, total: int, grid: list[int] | None, prefix: int | None,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 column, row and grid-membership (1/0) of tokens `start .. start+n` of `total` (or of
    the positions `start`, a tensor of n)."""
    h, w, p = grid_of(total, grid, prefix)
    where = torch.arange(start, start + n, device=device) if isinstance(start, int) else start.to(device)
    j = where - p
    inside = j >= 0
    j = j.clamp(min=0)
    return (j % w).float(), (j // w).float(), inside.float()


class _Placed(nn.Module):
    """A position encoding that knows where this rank's tokens sit in the whole sequence."""

    cp = None  # a l3m.dist.cp.ContextParallel when the sequence is split over ranks
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence

    def span(self, n: int) -> tuple[int | torch.Tensor, int]:
        """(first global position, or the global positions when the layout is not contiguous, and
        total tokens) of a local sequence of n."""
        if self.cp is None:
            return 0, n
        if self.cp.zigzag(n):
            return self.cp.positions(n), self.cp.total(n)
        return self.cp.offset(n), self.cp.total(n)


def _check_head_dim(head_dim: int, multiple: int, what: str) -> None:
    if head_dim % multiple:
        raise ValueError(f"{what} needs head_dim divisible by {multiple}, got {head_dim}")


@register("component")
class Rope(nn.Module, Positional):
    """1-D rotary positions for text, as a Transformer's `rope = true`.

    Pair i turns by p * theta^(-2i/head_dim); `scaling` as a Transformer's `rope_scaling` (Llama 3.1's
    [factor, low_freq_factor, high_freq_factor, original_context])."""

    context_parallel = "local"  # trait (l3m.traits): its RotaryEmbedding is "aware" and gets the `cp`

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: list[float] | None = None):
        super().__init__()
        self.rotary = RotaryEmbedding(head_dim, theta, scaling)  # its `cp` is set by l3m.dist.cp

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(q.shape[1])
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


@register("component")
class Rope2d(_Placed, Positional):
    """Axial 2-D RoPE for image tokens: half the rotary pairs turn with the column, half with the row.

    Pairs 0 .. hd/4-1 turn with the column, the rest with the row, pair i of each half by
    theta^(-i/(hd/4)) per step (theta 100, as Heo et al. for ViTs)."""

    def __init__(self, head_dim: int, theta: float = 100.0, grid: list[int] | None = None,
                 prefix: int | None = None):
        super().__init__()
        _check_head_dim(head_dim, 4, "Rope2d")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid is [h, w] with h, w >= 1, got {grid}")
        if prefix is not None and prefix < 0:
            raise ValueError(f"prefix must be >= 0, got {prefix}")
        self.head_dim, self.theta, self.prefix = head_dim, theta, prefix
        self.grid = list(grid) if grid is not None else None
        self.register_buffer("inv_freq", torch.empty(head_dim // 4), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        q = self.head_dim // 4
        with torch.no_grad():
            self.inv_freq.copy_((1.0 / self.theta ** (torch.arange(q, dtype=torch.float64) / q)).to(self.inv_freq.dtype))

    def tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, total = self.span(n)
        x, y, inside = coords(n, start, total, self.grid, self.prefix, self.inv_freq.device)
        f = self.inv_freq.float()
        angles = torch.cat([x[:, None] * f, y[:, None] * f], dim=-1) * inside[:, None]  # [n, hd/2]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.tables(q.shape[1])
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, grid={self.grid}, prefix={self.prefix}"


@register("component")
class RopeMixed(_Placed, Positional):
    """RoPE-Mixed (Heo et al. 2024): 2-D rotary positions with learned per-head frequencies.

    Pair i of head h turns by `x * fx[h, i] + y * fy[h, i]`, (fx, fy) learned.

    `heads` and `kv_heads` come from the host attention. `freqs` is `[2, kv_heads, head_dim/2]` (x then y),
    one set per key/value head so that a query
    turns like the key it is compared with under GQA. Init as the paper: magnitudes
    theta^(-4i/head_dim) in two orthogonal directions rotated by a random angle per head. The paper's code
    keeps them out of weight decay: `no_decay = [..., "*pos.freqs"]`.
    """

    def __init__(self, head_dim: int, heads: int | None = None, kv_heads: int | None = None, theta: float = 10.0,
                 grid: list[int] | None = None, prefix: int | None = None):
        super().__init__()
        _check_head_dim(head_dim, 4, "RopeMixed")
        if heads is None:  # built outside an attention (in Python): nothing supplied them
            raise ValueError("RopeMixed needs heads (an Attention host supplies them)")
        kvh = kv_heads or heads
        if heads % kvh:
            raise ValueError(f"kv_heads ({kvh}) must divide heads ({heads})")
        self.head_dim, self.heads, self.kv_heads, self.theta = head_dim, heads, kvh, theta
        self.grid, self.prefix = (list(grid) if grid is not None else None), prefix
        self.freqs = nn.Parameter(torch.empty(2, kvh, head_dim // 2))
        self.init_weights()

    def init_weights(self) -> None:
        q = self.head_dim // 4
        mag = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 4, dtype=torch.float32)[:q] / self.head_dim)
        phi = torch.rand(self.kv_heads, 1, device=self.freqs.device) * (2 * math.pi)
        mag = mag.to(self.freqs.device)
        fx = torch.cat([mag * phi.cos(), mag * (phi + math.pi / 2).cos()], dim=-1)
        fy = torch.cat([mag * phi.sin(), mag * (phi + math.pi / 2).sin()], dim=-1)
        with torch.no_grad():
            self.freqs.copy_(torch.stack([fx, fy]).to(self.freqs.dtype))

    def tables(self, n: int, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[n, G, hd]` for the G key/value heads of `freqs` `[2, G, hd/2]`."""
        start, total = self.span(n)
        x, y, inside = coords(n, start, total, self.grid, self.prefix, freqs.device)
        f = freqs.float()
        angles = (x[:, None, None] * f[0] + y[:, None, None] * f[1]) * inside[:, None, None]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = self.freqs
        if hasattr(freqs, "to_local"):  # tensor parallel: this rank's key/value heads (see Attention.tp_plan)
            freqs = freqs.to_local()
        cos, sin = self.tables(q.shape[1], freqs)
        rep = q.shape[2] // k.shape[2]
        qc, qs = (cos, sin) if rep == 1 else (cos.repeat_interleave(rep, 1), sin.repeat_interleave(rep, 1))
        return rotate(q, qc, qs), rotate(k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, heads={self.heads}, kv_heads={self.kv_heads}, theta={self.theta}"

"""Which tokens of a sequence each context-parallel rank holds, without any process group.

Two layouts:

- "contiguous": rank r holds tokens `r*n .. r*n + n - 1` (n = N / size). Under causal attention
  the last rank's queries see every key and rank 0's almost none: rank r does (r + 1) / size of
  the last rank's work.
- "zigzag" (load-balanced): the sequence is cut into 2*size chunks of c = N / (2*size) tokens and
  rank r holds chunks r and 2*size - 1 - r, one early and one late, so every rank's causal
  attention covers c^2 * (2*size + 1) query-key pairs. It needs N divisible by 2*size; a sequence
  that is not falls back to contiguous (the choice is a function of the local length, so every
  block of a forward agrees without shared state).

"The gathered order" is the order of an all-gather over the ranks: rank 0's tokens, then rank
1's, ... Under zigzag it is a permutation of the sequence; `key_positions` says which.
"""

from __future__ import annotations

import torch

LAYOUTS = ("contiguous", "zigzag")


class SequenceState:
    """The sequence now split over the ranks in one forward: its local length and true length
    (shorter than `local * size` when the last share was padded)."""

    def __init__(self) -> None:
        self.local: int | None = None
        self.valid: int | None = None

    def reset(self) -> None:
        self.local = self.valid = None

    def note(self, local: int, valid: int) -> None:
        self.local, self.valid = local, valid


class SequenceLayout:
    """This rank's share of a sequence split over `size` ranks (see the module docstring)."""

    def __init__(self, rank: int, size: int, layout: str = "contiguous") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"context-parallel layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.rank, self.size, self.layout = rank, size, layout
        self.state = SequenceState()  # set per forward by l3m.dist.cp (batches) and l3m.dist.cp_whole (blocks)

    def zigzag(self, n_local: int) -> bool:
        """Whether a local length of `n_local` tokens is held zigzag (balanced) on this batch."""
        return self.layout == "zigzag" and self.size > 1 and n_local % 2 == 0

    def chunks_of(self, rank: int, n_local: int) -> list[tuple[int, int]]:
        """`(global start, length)` of each run of consecutive tokens rank `rank` holds, in local order."""
        if not self.zigzag(n_local):
            return [(rank * n_local, n_local)]
        c = n_local // 2
        return [(rank * c, c), ((2 * self.size - 1 - rank) * c, c)]

    def chunks(self, n_local: int) -> list[tuple[int, int]]:
        """This rank's runs of consecutive tokens: `(global start, length)`, in local order."""
        return self.chunks_of(self.rank, n_local)

    def offset(self, n_local: int) -> int:
        """The global position of this rank's first token (the only one that matters when contiguous)."""
        return self.chunks(n_local)[0][0]

    def positions(self, n_local: int, device: torch.device | None = None) -> torch.Tensor:
        """The global positions of this rank's `n_local` tokens, in local order."""
        return torch.cat([torch.arange(s, s + c, device=device) for s, c in self.chunks(n_local)])

    def key_positions(self, n_local: int, device: torch.device | None = None) -> torch.Tensor:
        """The global positions of the whole sequence in the gathered order (every rank's tokens)."""
        return torch.cat([torch.arange(s, s + c, device=device)
                          for r in range(self.size) for s, c in self.chunks_of(r, n_local)])

    def total(self, n_local: int) -> int:
        """The true length of the sequence of which this rank holds `n_local` tokens (padding left out)."""
        if self.state.local == n_local and self.state.valid is not None:
            return self.state.valid
        return n_local * self.size

    def key_mask(self, n_local: int, device: torch.device | None = None) -> torch.Tensor | None:
        """`[N]` True for the real keys (gathered order) when the sequence was padded, else None."""
        total = self.total(n_local)
        if total >= n_local * self.size:
            return None
        return self.key_positions(n_local, device) < total

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's tokens of a whole sequence `x` (N along `dim`), in local order."""
        n = x.shape[dim]
        if n % self.size:
            raise ValueError(f"the sequence length {n} must divide by mesh.cp = {self.size}")
        parts = [x.narrow(dim, s, c) for s, c in self.chunks(n // self.size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)

    def unshard(self, gathered: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The natural order of a sequence given in the gathered order (a no-op when contiguous)."""
        n_local = gathered.shape[dim] // self.size
        if not self.zigzag(n_local):
            return gathered
        order = torch.argsort(self.key_positions(n_local, gathered.device))
        return gathered.index_select(dim, order)

    def causal_pairs(self, n_local: int) -> int:
        """Query-key pairs this rank's causal attention computes when each run of its queries reads
        only the keys up to its end (what `Attention` does under context parallelism)."""
        return sum(c * (s + c) for s, c in self.chunks(n_local))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, layout={self.layout!r})"


def causal_attention_flops(seq_len: int, size: int, layout: str, dim: int, depth: int = 1,
                           batch: int = 1) -> list[int]:
    """Per-rank FLOPs of causal attention's two matmuls (scores and weighted values, 2 FLOPs a
    multiply-add: 4 * dim per query-key pair) for `depth` layers, under `layout` with `size` ranks."""
    if seq_len % size:
        raise ValueError(f"the sequence length {seq_len} must divide by cp = {size}")
    n_local = seq_len // size
    return [4 * dim * depth * batch * SequenceLayout(r, size, layout).causal_pairs(n_local) for r in range(size)]

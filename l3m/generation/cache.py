"""The key/value cache of generation: each causal self-attention keeps the keys and values of the
tokens it has seen, so that a new token costs one position's work instead of the whole sequence's.

Prompts of different lengths are left-padded to one length. Slot j of sequence b then holds a real
token when j >= pad[b]; its position (what RoPE and position tables see) is j - pad[b], so every
sequence starts at position 0 as it would alone. `DecodeState` holds what all layers share (the
slots filled so far, which are real, the positions of the chunk being run); each `Attention` gets
its own `LayerCache` (`Attention.kv_cache`), which stores its keys/values and gives the mask.
"""

from __future__ import annotations

import torch


class DecodeState:
    """What every layer of one generation shares: `capacity` slots per sequence, `pad[b]` leading pad
    slots of sequence b, `length` slots filled before the chunk now running."""

    def __init__(self, pad: list[int], capacity: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.pad = torch.tensor(pad, dtype=torch.long, device=self.device)
        self.capacity, self.length, self.chunk = capacity, 0, 0
        slots = torch.arange(capacity, device=self.device)
        self.real = slots[None, :] >= self.pad[:, None]  # [B, capacity]: not a pad slot
        self._mask: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.pad.shape[0])

    def begin(self, n: int) -> None:
        """A chunk of n slots (the prompt, then one token at a time) is about to run."""
        if self.length + n > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens; {self.length + n} were asked for")
        self.chunk, self._mask = n, None

    def end(self) -> None:
        """The chunk has run through every layer: its slots are now part of the cache."""
        self.length += self.chunk
        self.chunk, self._mask = 0, None

    def positions(self) -> torch.Tensor:
        """`[B, n]` positions of the chunk's slots (pad slots clamp to 0: their output is never read)."""
        slots = torch.arange(self.length, self.length + self.chunk, device=self.device)
        return (slots[None, :] - self.pad[:, None]).clamp(min=0)

    def mask(self) -> torch.Tensor:
        """`[B, 1, n, length + n]` boolean: a query sees the real slots up to its own (and itself, so
        that a pad query's row is never empty, which would make softmax NaN)."""
        if self._mask is None:
            total = self.length + self.chunk
            q = torch.arange(self.length, total, device=self.device)[:, None]
            k = torch.arange(total, device=self.device)[None, :]
            seen = (k <= q)[None] & self.real[:, None, :total]
            self._mask = (seen | (k == q)[None])[:, None]
        return self._mask


class LayerCache:
    """One attention's keys and values `[B, capacity, kv_heads, head_dim]`, filled chunk by chunk."""

    def __init__(self, state: DecodeState) -> None:
        self.state = state
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Store the chunk's keys/values; return every key/value so far and the mask that replaces
        causality (called by `Attention.forward`)."""
        if mask is not None:
            raise ValueError("generation with a key/value cache cannot take the model's own attention mask")
        if not is_causal:
            raise ValueError("a key/value cache needs causal self-attention")
        s = self.state
        if self.k is None:
            shape = (k.shape[0], s.capacity, *k.shape[2:])
            self.k = k.new_zeros(shape)
            self.v = v.new_zeros(shape)
        start, stop = s.length, s.length + k.shape[1]
        self.k[:, start:stop] = k
        self.v[:, start:stop] = v
        return self.k[:, :stop], self.v[:, :stop], s.mask(), False

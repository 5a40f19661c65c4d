"""Choosing the next token from logits: greedy at temperature 0, else nucleus (top-p) sampling.

Draws come from a `torch.Generator` seeded once per call, so a seed gives the same text again.
"""

from __future__ import annotations

import torch


def check_sampling(temperature: float, top_p: float) -> None:
    """ValueError for settings that choose nothing."""
    if not temperature >= 0.0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """`[B]` token ids from `[B, vocab]` logits: the argmax at temperature 0; otherwise a draw from
    the smallest set of most likely tokens whose probabilities reach `top_p`."""
    logits = logits.float()
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the tokens ranked above each one
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

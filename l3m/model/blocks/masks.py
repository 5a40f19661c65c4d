"""Attention masks for `F.scaled_dot_product_attention`.

Every mask is boolean `[B, 1, N, N]` (broadcast over heads) with True = "query i may attend
key j". None of these blocks has parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from l3m.registry import register


def causal(n: int, device: torch.device | None = None) -> torch.Tensor:
    """`[N, N]` lower-triangular: query i sees keys 0..i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


@register("block")
class CausalMask(nn.Module):
    """Each token attends to itself and the tokens before it."""

    outputs = ("mask",)

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        return causal(n, x.device)[None, None].expand(b, 1, n, n)


@register("block")
class PrefixCausalMask(nn.Module):
    """Bidirectional among the first `offset + prefix_len[b]` tokens, causal after them.

    `offset` counts tokens that always belong to the prefix (a cls token, registers).
    """

    outputs = ("mask",)

    def __init__(self, offset: int = 0):
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        j = torch.arange(n, device=x.device)
        prefix = (j[None, :] < (prefix_len.to(x.device)[:, None] + self.offset))[:, None, None, :]  # [B,1,1,N]
        return causal(n, x.device)[None, None] | prefix


@register("block")
class PaddingMask(nn.Module):
    """No token attends to padding keys (`tokens == pad_id`).

    A padding query still sees itself, so its row is never empty (an empty row makes SDPA
    return NaN); its output is garbage that a loss should ignore.
    """

    outputs = ("mask",)

    def __init__(self, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        valid = (tokens != self.pad_id)[:, None, None, :]
        eye = torch.eye(n, dtype=torch.bool, device=tokens.device)[None, None]
        return valid | eye


@register("block")
class DocumentMask(nn.Module):
    """Causal attention within documents of a packed sequence; a document ends with `eos_id`
    (the eos token belongs to the document it closes)."""

    outputs = ("mask",)

    def __init__(self, eos_id: int):
        super().__init__()
        self.eos_id = eos_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        is_eos = (tokens == self.eos_id).long()
        doc = is_eos.cumsum(dim=1) - is_eos  # eos tokens before position i
        same = doc[:, :, None] == doc[:, None, :]
        return (same & causal(tokens.shape[1], tokens.device)[None])[:, None]

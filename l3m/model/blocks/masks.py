"""Attention masks for `F.scaled_dot_product_attention`.

Every mask is boolean `[B, 1, N, N]` (broadcast over heads) with True = "query i may attend
key j". None of these blocks has parameters.

Under context parallelism `l3m.dist.cp` sets `cp` on each mask block: its input is then this
rank's share of the sequence, and the mask is `[B, 1, n_local, N]`, the rows of the local
queries over every key, the keys in the gathered order (`key_columns`; the sequence order unless
the layout is zigzag, see `l3m.dist.cp_layout`).

`DocumentMask` may instead give a FlexAttention `BlockMask` (on CUDA, see `l3m.model.blocks.flex`),
which `Attention` runs with FlexAttention.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from l3m.model.blocks.flex import document_block_mask, flex_available
from l3m.registry import register


def causal(n: int, device: torch.device | None = None) -> torch.Tensor:
    """`[N, N]` lower-triangular: query i sees keys 0..i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def causal_rows(rows: torch.Tensor, n_keys: int, cols: torch.Tensor | None = None) -> torch.Tensor:
    """`[len(rows), n_keys]`: the causal mask's rows for the query positions `rows`, over the key
    positions `cols` (default `0 .. n_keys - 1`)."""
    cols = torch.arange(n_keys, device=rows.device) if cols is None else cols
    return cols[None, :] <= rows[:, None]


def query_rows(module: nn.Module, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """The positions of a mask's `n` query rows and the number of keys: `0..n-1` and n, or under
    context parallelism this rank's slice of the sequence and the whole length."""
    cp = getattr(module, "cp", None)
    if cp is None:
        return torch.arange(n, device=device), n
    return cp.positions(n, device), n * cp.size


def key_columns(module: nn.Module, n: int, device: torch.device) -> torch.Tensor:
    """The sequence positions of a mask's columns for `n` local tokens: `0..n-1`, or under context
    parallelism every rank's positions in the gathered order (that of `all_keys` and of the keys
    `Attention` gathers)."""
    cp = getattr(module, "cp", None)
    return torch.arange(n, device=device) if cp is None else cp.key_positions(n, device)


def all_keys(module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The token ids of every key position (gathered over the ranks under context parallelism)."""
    cp = getattr(module, "cp", None)
    return tokens if cp is None else cp.gather_ids(tokens)


@register("block")
class CausalMask(nn.Module):
    """Each token attends to itself and the tokens before it."""

    causal = True  # its rows are causal: l3m.dist.cp balances the sequence over the ranks (zigzag)
    outputs = ("mask",)
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence
    shapes = "x: [B, N, ...] -> mask: bool[B, 1, N, N]"
    cp = None

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        rows, total = query_rows(self, n, x.device)
        return causal_rows(rows, total, key_columns(self, n, x.device))[None, None].expand(b, 1, n, total)


@register("block")
class PrefixCausalMask(nn.Module):
    """Bidirectional among the first `offset + prefix_len[b]` tokens, causal after them.

    `offset` counts tokens that always belong to the prefix (a cls token, registers).
    """

    causal = True  # its rows are causal: l3m.dist.cp balances the sequence over the ranks (zigzag)
    outputs = ("mask",)
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence
    shapes = "x: [B, N, ...], prefix_len: [B] -> mask: bool[B, 1, N, N]"
    cp = None

    def __init__(self, offset: int = 0):
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        rows, total = query_rows(self, x.shape[1], x.device)
        j = key_columns(self, x.shape[1], x.device)
        prefix = (j[None, :] < (prefix_len.to(x.device)[:, None] + self.offset))[:, None, None, :]  # [B,1,1,N]
        return causal_rows(rows, total, j)[None, None] | prefix


@register("block")
class PaddingMask(nn.Module):
    """No token attends to padding keys (`tokens == pad_id`).

    A padding query still sees itself, so its row is never empty (an empty row makes SDPA
    return NaN); its output is garbage that a loss should ignore.
    """

    outputs = ("mask",)
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence
    shapes = "tokens: [B, N] -> mask: bool[B, 1, N, N]"
    cp = None

    def __init__(self, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, total = query_rows(self, tokens.shape[1], tokens.device)
        valid = (all_keys(self, tokens) != self.pad_id)[:, None, None, :]
        eye = (key_columns(self, tokens.shape[1], tokens.device)[None, :] == rows[:, None])[None, None]
        return valid | eye


@register("block")
class DocumentMask(nn.Module):
    """Causal attention within the documents of a packed sequence: query i sees key j iff j <= i
    and both belong to one document.

    Documents come from `segments` (int `[B, N]`, the document index of every position, as a packed
    source's `segments` port gives them: 0, 1, 2, ... along the window) or, without it, from
    `tokens` and `eos_id` (a document ends with `eos_id`; the eos belongs to the document it closes).

    `impl`: "dense" gives the boolean `[B, 1, N, N]` mask (SDPA); "flex" a FlexAttention `BlockMask`
    that skips the masked tiles; "auto" (the default) is flex on CUDA and dense elsewhere (torch's
    FlexAttention has no backward on the CPU) and always dense under context parallelism (each rank
    builds its rows). Both give the same attention.

    The loss is left alone, as the original's is: every target counts (only `ignore_index` targets
    are skipped), including the one at a document's last token, whose target is the first token of
    the next document. Positions are not reset per document (the original's default too).
    """

    causal = True  # its rows are causal: l3m.dist.cp balances the sequence over the ranks (zigzag)
    outputs = ("mask",)
    context_parallel = "aware"  # trait (l3m.traits): reads `cp` to work on a slice of the sequence
    shapes = "@document_mask"  # needs `segments`, or `tokens` with eos_id
    cp = None

    def __init__(self, eos_id: int | None = None, impl: Literal["auto", "flex", "dense"] = "auto"):
        super().__init__()
        if impl not in ("auto", "flex", "dense"):
            raise ValueError(f"impl must be auto, flex or dense, not {impl!r}")
        self.eos_id, self.impl = eos_id, impl

    def forward(self, tokens: torch.Tensor | None = None, segments: torch.Tensor | None = None):
        if segments is not None:
            doc = self._in_order(all_keys(self, segments))
            ref = segments
        elif tokens is None:
            raise ValueError("DocumentMask reads `segments` (document ids) or `tokens` (with eos_id); bind one")
        elif self.eos_id is None:
            raise ValueError("DocumentMask finds documents in `tokens` by eos_id: give eos_id, or bind `segments`")
        else:
            is_eos = (self._in_order(all_keys(self, tokens)) == self.eos_id).long()
            doc = is_eos.cumsum(dim=1) - is_eos  # eos tokens before position i
            ref = tokens
        if self.impl == "flex" or (self.impl == "auto" and self.cp is None and flex_available(doc.device)):
            if self.cp is not None:
                raise ValueError("DocumentMask(impl = \"flex\") cannot run under context parallelism "
                                 "(mesh.cp > 1); use impl = auto or dense")
            return document_block_mask(doc)
        rows, total = query_rows(self, ref.shape[1], ref.device)
        cols = key_columns(self, ref.shape[1], ref.device)
        same = doc[:, rows][:, :, None] == doc[:, cols][:, None, :]
        return (same & causal_rows(rows, total, cols)[None])[:, None]

    def _in_order(self, keys: torch.Tensor) -> torch.Tensor:
        """Gathered ids in sequence order (documents are runs of the sequence, not of the gathered order)."""
        return keys if self.cp is None else self.cp.unshard(keys, 1)

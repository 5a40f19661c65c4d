"""Context parallelism, block by block, on one process: a block told that it holds rank r's share of
the sequence (contiguous or zigzag) gives rank r's rows of what it gives on the whole sequence (mask
columns in the gathered order); batches are cut alike."""

from __future__ import annotations

import pytest
import torch

from l3m.dist import shard_batch
from l3m.dist.cp_layout import SequenceLayout
from l3m.model.blocks.embeddings import PosEmbed, RotaryEmbedding
from l3m.model.blocks.masks import CausalMask, DocumentMask, PaddingMask, PrefixCausalMask
from l3m.model.blocks.rope import Rope2d

RANKS, N = 2, 8  # two context-parallel ranks of 4 tokens each


class SliceCP(SequenceLayout):
    """What a block sees of `l3m.dist.cp.ContextParallel` on rank `rank`; `whole` is the sequence the
    gathers of token ids see (they return every rank's tokens in the gathered order, as the real
    all-gather would)."""

    def __init__(self, rank: int, size: int, whole: torch.Tensor | None = None, layout: str = "contiguous") -> None:
        super().__init__(rank, size, layout)
        self.whole = whole

    def gather_ids(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        assert torch.equal(x, self.shard(self.whole, dim))
        return self.whole.index_select(dim, self.key_positions(x.shape[dim]))


def local(x: torch.Tensor, rank: int, dim: int = 1, layout: str = "contiguous") -> torch.Tensor:
    return SequenceLayout(rank, RANKS, layout).shard(x, dim)


def rows_and_columns(whole: torch.Tensor, rank: int, layout: str) -> torch.Tensor:
    """Rank `rank`'s rows of a whole `[B, 1, N, N]` mask, its columns in the gathered order."""
    cp = SequenceLayout(rank, RANKS, layout)
    return cp.shard(whole, 2).index_select(3, cp.key_positions(N // RANKS))


def tokens() -> torch.Tensor:
    t = torch.tensor([[5, 6, 3, 7, 8, 3, 9, 0], [1, 3, 2, 2, 3, 4, 0, 0]])
    assert t.shape == (2, N)
    return t


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("make, inputs", [
    (CausalMask, lambda: (torch.randn(2, N, 4),)),
    (lambda: PrefixCausalMask(offset=1), lambda: (torch.randn(2, N, 4), torch.tensor([2, 5]))),
    (lambda: PaddingMask(pad_id=0), lambda: (tokens(),)),
    (lambda: DocumentMask(eos_id=3), lambda: (tokens(),)),
])
def test_mask_blocks_build_their_rows(make, inputs, layout):
    args = inputs()
    block = make()
    whole = block(*args)
    assert whole.shape[-2:] == (N, N)
    for rank in range(RANKS):
        block.cp = SliceCP(rank, RANKS, whole=tokens(), layout=layout)
        mine = block(*[local(a, rank, layout=layout) if a.dim() >= 2 else a for a in args])
        assert mine.shape[-2:] == (N // RANKS, N)
        assert torch.equal(mine, rows_and_columns(whole.expand(-1, -1, N, N), rank, layout)), rank


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_position_tables_follow_the_rank_positions(layout):
    pos = PosEmbed(dim=4, num=5, offset=2)  # positions 2..6 get the table; 0, 1 and 7 are left alone
    x = torch.randn(2, N, 4)
    rope = RotaryEmbedding(head_dim=4)
    rope2d = Rope2d(head_dim=8, prefix=4)  # 4 prefix tokens and a 2x2 grid
    whole_pos, (whole_cos, whole_sin), whole_2d = pos(x), rope(N), rope2d.tables(N)
    for rank in range(RANKS):
        pos.cp = rope.cp = rope2d.cp = SliceCP(rank, RANKS, layout=layout)
        assert torch.equal(pos(local(x, rank, layout=layout)), local(whole_pos, rank, layout=layout))
        cos, sin = rope(N // RANKS)
        assert torch.equal(cos, local(whole_cos, rank, 0, layout)) and torch.equal(sin, local(whole_sin, rank, 0, layout))
        for got, want in zip(rope2d.tables(N // RANKS), whole_2d, strict=True):
            assert torch.equal(got, local(want, rank, 0, layout))


def test_shard_batch_cuts_per_token_tensors_only():
    batch = {"tokens": tokens(), "targets": tokens() + 1, "prefix_len": torch.tensor([1, 2]),
             "image": torch.randn(2, N, 4, 4), "feats": torch.randn(2, N, 3), "name": "x"}
    out = shard_batch(batch, SliceCP(1, RANKS), ["tokens"])
    assert torch.equal(out["tokens"], tokens()[:, 4:]) and torch.equal(out["targets"], tokens()[:, 4:] + 1)
    assert torch.equal(out["feats"], batch["feats"][:, 4:])
    assert out["prefix_len"] is batch["prefix_len"] and out["image"] is batch["image"] and out["name"] == "x"
    with pytest.raises(ValueError, match="must divide by mesh.cp = 3"):
        shard_batch(batch, SliceCP(0, 3), ["tokens"])
    with pytest.raises(ValueError, match="reads no integer"):
        shard_batch({"image": batch["image"]}, SliceCP(0, 2), ["image"])

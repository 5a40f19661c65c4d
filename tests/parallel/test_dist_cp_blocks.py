"""Context parallelism, block by block, on one process: a block told that it holds rank r's slice of
the sequence gives rank r's rows of what it gives on the whole sequence; batches are cut alike."""

from __future__ import annotations

import pytest
import torch

from l3m.dist import shard_batch
from l3m.model.blocks.embeddings import PosEmbed, RotaryEmbedding
from l3m.model.blocks.masks import CausalMask, DocumentMask, PaddingMask, PrefixCausalMask

RANKS, N = 2, 8  # two context-parallel ranks of 4 tokens each


class SliceCP:
    """What a block sees of `l3m.dist.cp.ContextParallel` on rank `rank`; `whole` is what the
    gathers of token ids return (every rank's slice, as the real all-gather would give)."""

    def __init__(self, rank: int, size: int, whole: torch.Tensor | None = None) -> None:
        self.rank, self.size, self.whole = rank, size, whole

    def offset(self, n_local: int) -> int:
        return self.rank * n_local

    def gather_ids(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        assert torch.equal(x, self.whole.narrow(dim, self.offset(x.shape[dim]), x.shape[dim]))
        return self.whole


def local(x: torch.Tensor, rank: int, dim: int = 1) -> torch.Tensor:
    n = x.shape[dim] // RANKS
    return x.narrow(dim, rank * n, n)


def tokens() -> torch.Tensor:
    t = torch.tensor([[5, 6, 3, 7, 8, 3, 9, 0], [1, 3, 2, 2, 3, 4, 0, 0]])
    assert t.shape == (2, N)
    return t


@pytest.mark.parametrize("make, inputs", [
    (CausalMask, lambda: (torch.randn(2, N, 4),)),
    (lambda: PrefixCausalMask(offset=1), lambda: (torch.randn(2, N, 4), torch.tensor([2, 5]))),
    (lambda: PaddingMask(pad_id=0), lambda: (tokens(),)),
    (lambda: DocumentMask(eos_id=3), lambda: (tokens(),)),
])
def test_mask_blocks_build_their_rows(make, inputs):
    args = inputs()
    block = make()
    whole = block(*args)
    assert whole.shape[-2:] == (N, N)
    for rank in range(RANKS):
        block.cp = SliceCP(rank, RANKS, whole=tokens())
        mine = block(*[local(a, rank) if a.dim() >= 2 else a for a in args])
        assert mine.shape[-2:] == (N // RANKS, N)
        assert torch.equal(mine, local(whole, rank, dim=2)), rank


def test_position_tables_start_at_the_rank_offset():
    pos = PosEmbed(dim=4, num=5, offset=2)  # positions 2..6 get the table; 0, 1 and 7 are left alone
    x = torch.randn(2, N, 4)
    rope = RotaryEmbedding(head_dim=4)
    whole_pos, (whole_cos, whole_sin) = pos(x), rope(N)
    for rank in range(RANKS):
        pos.cp = rope.cp = SliceCP(rank, RANKS)
        assert torch.equal(pos(local(x, rank)), local(whole_pos, rank))
        cos, sin = rope(N // RANKS)
        assert torch.equal(cos, local(whole_cos, rank, dim=0)) and torch.equal(sin, local(whole_sin, rank, dim=0))


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

"""Load-balanced (zigzag) context parallelism on one process: the permutation and its inverse, equal
causal-attention work per rank, and causal attention over a rank's share equal to its rows of the whole."""

from __future__ import annotations

import pytest
import torch

from l3m.dist.cp_layout import SequenceLayout, causal_attention_flops
from l3m.model.blocks.attention import attend, cp_causal_attend


@pytest.mark.parametrize("size", [2, 4])
def test_zigzag_holds_chunk_r_and_its_mirror(size):
    n_local = 4
    held = [SequenceLayout(r, size, "zigzag").positions(n_local).tolist() for r in range(size)]
    c = n_local // 2
    for r, pos in enumerate(held):
        mirror = 2 * size - 1 - r
        assert pos == list(range(r * c, r * c + c)) + list(range(mirror * c, mirror * c + c))
    assert sorted(sum(held, [])) == list(range(size * n_local))  # a permutation of the sequence


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_shard_then_gather_then_unshard_is_the_identity(layout):
    size, x = 4, torch.randn(2, 16, 3)
    layouts = [SequenceLayout(r, size, layout) for r in range(size)]
    gathered = torch.cat([cp.shard(x) for cp in layouts], dim=1)  # what an all-gather returns
    assert torch.equal(gathered, x.index_select(1, layouts[0].key_positions(4)))
    assert torch.equal(layouts[0].unshard(gathered), x)


def test_odd_local_length_falls_back_to_contiguous():
    cp = SequenceLayout(1, 2, "zigzag")
    assert not cp.zigzag(3) and cp.positions(3).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="layout must be one of"):
        SequenceLayout(0, 2, "striped")


@pytest.mark.parametrize("size", [2, 4])
def test_zigzag_balances_causal_attention_flops(size):
    contiguous = causal_attention_flops(64, size, "contiguous", dim=32, depth=2)
    zigzag = causal_attention_flops(64, size, "zigzag", dim=32, depth=2)
    assert len(set(zigzag)) == 1  # every rank does the same work
    assert contiguous == sorted(contiguous) and contiguous[0] < contiguous[-1]
    # Each run of queries computes its square diagonal block whole; zigzag's runs are shorter.
    assert sum(zigzag) <= sum(contiguous)
    assert max(zigzag) < max(contiguous)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_causal_attention_on_a_share_is_that_share_of_the_whole(layout, with_mask):
    torch.manual_seed(0)
    size, n, b = 2, 8, 2
    q, k, v = (torch.randn(b, n, 2, 4) for _ in range(3))
    docs = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])  # a document mask (columns in sequence order)
    doc_mask = (docs[:, None] == docs[None, :])[None, None].expand(b, 1, n, n)
    whole = attend(q, k, v, mask=doc_mask if with_mask else None, is_causal=True)
    for r in range(size):
        cp = SequenceLayout(r, size, layout)
        cols = cp.key_positions(n // size)
        mask = cp.shard(doc_mask, 2).index_select(3, cols) if with_mask else None
        got = cp_causal_attend(cp, cp.shard(q), k.index_select(1, cols), v.index_select(1, cols), mask)
        torch.testing.assert_close(got, cp.shard(whole), rtol=1e-6, atol=1e-6)


def test_plan_shows_per_rank_attention_flops():
    from torch import nn

    from l3m.model.blocks.attention import Attention
    from l3m.plan import _si
    from l3m.plan_cp import cp_attention_flops, format_cp_attention

    model = nn.ModuleDict({"attn": Attention(dim=8, heads=2, causal=True)})
    model.input_keys = ["tokens"]
    sample = {"tokens": torch.zeros(1, 16, dtype=torch.long)}
    assert cp_attention_flops(model, sample, {"cp": 1}) is None
    got = cp_attention_flops(model, sample, {"cp": 2})
    assert got["layout"] == "zigzag" and got["per_rank"] == causal_attention_flops(16, 2, "zigzag", dim=8)
    assert got["contiguous"] == causal_attention_flops(16, 2, "contiguous", dim=8)
    (line,) = format_cp_attention({"cp_attention": got}, _si)
    assert line.startswith("attention FLOPs per rank") and "cp zigzag: 2.56 k / 2.56 k (contiguous: 2.05 k / 4.10 k)" in line


class GatheringLayout(SequenceLayout):
    """A rank whose gathers return `whole`'s shares of every rank (what the all-gather would)."""

    def __init__(self, rank: int, size: int, layout: str, whole: torch.Tensor) -> None:
        super().__init__(rank, size, layout)
        self.whole = whole

    def gather_whole(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return self.whole


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_whole_blocks_pad_share_out_and_gather_back(layout):
    from l3m.dist.cp_whole import gather_share, is_share, share_out

    size, x = 2, torch.randn(2, 17, 3)  # a cls token and 16 patches: padded to 18 (contiguous) or 20 (zigzag)
    padded = 18 if layout == "contiguous" else 20
    for r in range(size):
        cp = GatheringLayout(r, size, layout, torch.nn.functional.pad(x, (0, 0, 0, padded - 17)))
        mine = share_out(cp, x)
        assert mine.shape == (2, padded // size, 3) and is_share(cp, mine) and not is_share(cp, x[:, 0])
        assert cp.total(padded // size) == 17
        keep = cp.key_mask(padded // size)
        assert keep.sum() == 17 and not keep[cp.key_positions(padded // size) >= 17].any()
        assert torch.equal(gather_share(cp, mine), x)

"""Document masking: segment ids or EOS, dense or FlexAttention, and the property that matters —
a token's output does not depend on the other documents of its window."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from l3m.dist.cp_layout import SequenceLayout
from l3m.model.blocks.attention import Attention, attend
from l3m.model.blocks.flex import document_block_mask, document_causal, is_block_mask
from l3m.model.blocks.masks import CausalMask, DocumentMask
from l3m.model.blocks.transformer import Transformer

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def docs(*lengths: int) -> torch.Tensor:
    """Segment ids `[1, sum(lengths)]` for documents of these lengths."""
    return torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]


class SliceCP(SequenceLayout):
    """What a mask block sees of contiguous context parallelism on rank `rank` (gathers return `whole`;
    the zigzag layout is tested in tests/parallel/test_dist_cp_blocks.py)."""

    def __init__(self, rank: int, size: int, whole: torch.Tensor) -> None:
        super().__init__(rank, size, "contiguous")
        self.whole = whole

    def gather_ids(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return self.whole


def test_segments_and_eos_give_the_same_mask():
    tokens = torch.tensor([[5, 9, 6, 7, 9, 8]])  # eos = 9 closes documents 0 and 1
    seg = torch.tensor([[0, 0, 1, 1, 1, 2]])
    by_eos = DocumentMask(eos_id=9, impl="dense")(tokens)
    by_seg = DocumentMask(impl="dense")(segments=seg)
    assert torch.equal(by_eos, by_seg)
    assert by_seg[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    # segments win over tokens; auto is dense on the CPU
    assert torch.equal(DocumentMask(eos_id=9)(torch.zeros_like(tokens), seg), by_seg)


def test_without_document_ids_it_says_what_to_bind():
    with pytest.raises(ValueError, match="eos_id"):
        DocumentMask()(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="segments"):
        DocumentMask()()
    with pytest.raises(ValueError, match="impl"):
        DocumentMask(impl="sparse")


def test_context_parallel_rows_from_segments():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 3]])
    whole = DocumentMask()(segments=seg)
    for rank in range(2):
        block = DocumentMask()
        block.cp = SliceCP(rank, 2, seg)
        mine = block(segments=seg[:, rank * 4:(rank + 1) * 4])
        assert torch.equal(mine, whole[:, :, rank * 4:(rank + 1) * 4]), rank
    block = DocumentMask(impl="flex")
    block.cp = SliceCP(0, 2, seg)
    with pytest.raises(ValueError, match="context parallelism"):
        block(segments=seg[:, :4])


@pytest.mark.parametrize("lengths", [(60, 90, 50, 100), (300,), (128, 129, 43)])
def test_block_mask_tiles_match_torch_create_block_mask(lengths):
    """The tile table built from each tile's id range is exactly torch's (partial and full tiles),
    here for N = 300 (not a multiple of the 128-token tile)."""
    seg = docs(*lengths).repeat(2, 1)
    seg[1] = docs(10, 290)
    n = seg.shape[1]
    mine = document_block_mask(seg)
    ref = create_block_mask(document_causal(seg), 2, None, n, n, device="cpu")
    assert torch.equal(mine.to_dense(), ref.to_dense())
    assert torch.equal(mine.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(mine.full_kv_num_blocks, ref.full_kv_num_blocks)


def test_flex_and_dense_attention_agree_on_the_cpu():
    """FlexAttention runs on the CPU without gradients (torch has no CPU backward for it): the same
    attention as SDPA with the dense mask, with GQA, for contiguous and for scattered ids."""
    torch.manual_seed(0)
    contiguous = torch.cat([docs(70, 100, 60), docs(1, 229)])
    scattered = torch.randint(0, 3, (2, 230))  # not contiguous: less sparse tiles, same attention
    for seg in (contiguous, scattered):
        q, k, v = torch.randn(2, 230, 4, 8), torch.randn(2, 230, 2, 8), torch.randn(2, 230, 2, 8)
        flex = DocumentMask(impl="flex")(segments=seg)
        assert is_block_mask(flex)
        with torch.no_grad():
            a = attend(q, k, v, mask=flex, is_causal=True)
            b = attend(q, k, v, mask=DocumentMask(impl="dense")(segments=seg), is_causal=True)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_flex_on_the_cpu_refuses_gradients_clearly():
    seg = docs(3, 5)
    q = torch.randn(1, 8, 2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward on the CPU"):
        attend(q, q, q, mask=DocumentMask(impl="flex")(segments=seg))


def test_attention_refuses_a_block_mask_under_context_parallelism():
    attn = Attention(dim=8, heads=2)
    attn.cp = SliceCP(0, 1, torch.zeros(1, 8))
    with pytest.raises(ValueError, match="context-parallel"):
        attn(torch.randn(1, 8, 8), mask=DocumentMask(impl="flex")(segments=docs(4, 4)), is_causal=True)


def _outputs(model: Transformer, mask_block, tokens: torch.Tensor, seg: torch.Tensor, embed) -> torch.Tensor:
    mask = mask_block(segments=seg) if isinstance(mask_block, DocumentMask) else mask_block(embed(tokens))
    with torch.no_grad():
        return model(embed(tokens), mask=mask)[0]


@pytest.mark.parametrize("impl", ["dense", "flex"])
def test_a_tokens_output_does_not_depend_on_the_other_documents(impl):
    """Documents A | B | C in one window: replacing B's and C's tokens leaves A's outputs as they
    were, and replacing A's and B's leaves C's (same positions, so same rotary phases). Without the
    document mask C's outputs do change (the check can fail)."""
    torch.manual_seed(0)
    embed = torch.nn.Embedding(50, 16)
    model = Transformer(dim=16, depth=2, heads=2, causal=True, rope=True).eval()
    seg = docs(5, 7, 6)
    a, b, c = slice(0, 5), slice(5, 12), slice(12, 18)
    x = torch.randint(0, 50, (1, 18))
    y = x.clone()
    y[:, b], y[:, c] = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 6))
    z = x.clone()
    z[:, a], z[:, b] = torch.randint(0, 50, (1, 5)), torch.randint(0, 50, (1, 7))
    mask = DocumentMask(impl=impl)
    base = _outputs(model, mask, x, seg, embed)
    torch.testing.assert_close(_outputs(model, mask, y, seg, embed)[:, a], base[:, a], atol=1e-6, rtol=0)
    torch.testing.assert_close(_outputs(model, mask, z, seg, embed)[:, c], base[:, c], atol=1e-6, rtol=0)
    # the control: plain causal attention lets C see A and B
    plain = _outputs(model, CausalMask(), x, seg, embed)
    assert not torch.allclose(_outputs(model, CausalMask(), z, seg, embed)[:, c], plain[:, c], atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's fused kernels: CUDA")
def test_on_cuda_auto_uses_flex_and_matches_dense_with_gradients():
    """Where a GPU is present: impl = auto gives a BlockMask, and a transformer trained through it
    gets the outputs and gradients of the dense path (N = 300: not a multiple of the 128 tile)."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    seg = torch.cat([docs(100, 150, 50), docs(1, 299)]).to(dev)
    assert is_block_mask(DocumentMask()(segments=seg))
    model = Transformer(dim=64, depth=2, heads=4, kv_heads=2, causal=True, rope=True).to(dev)
    x = torch.randn(2, 300, 64, device=dev)
    results = []
    for impl in ("auto", "dense"):
        model.zero_grad()
        out = model(x, mask=DocumentMask(impl=impl)(segments=seg))[0]
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=2e-5, rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)

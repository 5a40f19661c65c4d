"""FlexAttention for document masks: a `BlockMask` built straight from document ids, and the call.

A dense `[B, 1, N, N]` mask costs memory quadratic in the sequence and makes SDPA compute every
score; a document-causal `BlockMask` tells the FlexAttention kernel which 128 x 128 tiles to skip
(other documents, the future) and which to run without evaluating the mask at all (tiles inside one
document, below the diagonal).

`document_block_mask` computes the tile table from each tile's smallest and largest document id,
so it never materialises an `N x N` mask (torch's `create_block_mask` does, once per batch). A tile
pair is marked *full* only when both tiles hold one and the same document, strictly below the
diagonal; any other pair whose id ranges overlap on or below the diagonal is *partial* (the kernel
evaluates `mask_mod` there). That is exact for contiguous documents (ids that never decrease along
the sequence, as packed sources emit) and still correct, only less sparse, for any other ids.

FlexAttention's fused kernel needs `torch.compile`; inside a compiled model the call is compiled
with it, and outside one `flex_attend` uses a compiled `flex_attention` of its own. On the CPU,
torch runs FlexAttention only without gradients, so training there uses the dense mask
(`DocumentMask(impl = "auto")` decides).
"""

from __future__ import annotations

import functools
import math

import torch

try:  # FlexAttention arrived in torch 2.5; without it every document mask is dense
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - the pinned torch has it
    BlockMask, flex_attention = None, None

BLOCK = 128  # FlexAttention's default tile


def flex_available(device: torch.device) -> bool:
    """Whether `DocumentMask(impl = "auto")` uses a BlockMask on `device` (CUDA with FlexAttention)."""
    return flex_attention is not None and device.type == "cuda"


def is_block_mask(mask: object) -> bool:
    return BlockMask is not None and isinstance(mask, BlockMask)


def document_causal(doc: torch.Tensor):
    """The `mask_mod` of document-causal attention over ids `doc` `[B, N]`."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[b, q_idx] == doc[b, kv_idx]) & (q_idx >= kv_idx)

    return mask_mod


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A `[B, nq, nk]` bool tile table -> (count per row `[B, 1, nq]`, indices of the True tiles
    first, ascending `[B, 1, nq, nk]`), int32 as FlexAttention wants them."""
    num = blocks.sum(-1, dtype=torch.int32)
    idx = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[:, None], idx[:, None]


def document_block_mask(doc: torch.Tensor, block: int = BLOCK):
    """A document-causal `BlockMask` for ids `doc` `[B, N]` (query i sees key j iff j <= i and both
    belong to one document), one mask for every head."""
    if BlockMask is None:  # pragma: no cover
        raise RuntimeError("FlexAttention is not available in this torch; use DocumentMask(impl = \"dense\")")
    b, n = doc.shape
    nb = math.ceil(n / block)
    pad = nb * block - n
    padded = torch.cat([doc, doc[:, -1:].expand(b, pad)], dim=1) if pad else doc
    tiles = padded.reshape(b, nb, block)
    lo, hi = tiles.amin(-1), tiles.amax(-1)  # [B, nb]
    i = torch.arange(nb, device=doc.device)
    below = i[:, None] >= i[None, :]  # kv tile not after the query tile
    overlap = (lo[:, None, :] <= hi[:, :, None]) & (lo[:, :, None] <= hi[:, None, :])
    one_doc = lo == hi
    full = (i[:, None] > i[None, :]) & one_doc[:, :, None] & one_doc[:, None, :] & (lo[:, :, None] == lo[:, None, :])
    if pad:  # the last tile holds positions past N: never skip the mask there
        full[:, -1, :] = False
        full[:, :, -1] = False
    partial = below & overlap & ~full
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=document_causal(doc), seq_lengths=(n, n))


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float) -> torch.Tensor:
    """FlexAttention on `[B, H, N, hd]` tensors (k/v may have fewer heads: GQA)."""
    eager = torch.compiler.is_compiling() or q.device.type == "cpu"
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError("FlexAttention has no backward on the CPU: train there with DocumentMask(impl = \"dense\") "
                           "or \"auto\"")
    fn = flex_attention if eager else _compiled_flex()
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])

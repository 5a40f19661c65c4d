"""Context parallelism: each `cp` rank holds one contiguous slice of the token sequence.

The batch is cut along the sequence when it enters the model (`shard_batch`, run by a forward
pre-hook on the root, so training and evaluation see the same thing, and the targets the loss
reads are cut alike). Token-local layers (embeddings, feed-forwards, norms, heads) need nothing
more. The blocks that look along the sequence consult the `ContextParallel` object that
`apply_cp` sets as their `cp` attribute:

- self-attention all-gathers its keys and values over the `cp` ranks with a differentiable
  collective (the backward reduce-scatters their gradients), so each local query sees the
  whole sequence; masks are `[B, 1, n_local, N]`: rows for this rank's queries, columns for
  every key, and the causal mask is offset by the rank's position;
- rotary and absolute position tables start at the rank's offset;
- mask blocks build only their rows (token-based masks gather the token ids first).

Blocks that pool or reorder tokens over the whole sequence cannot run on a slice; a model with
one is refused with the block's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_gather_single_autograd

from l3m.dist.mesh import ParallelDims
from l3m.dist.units import blocks
from l3m.model.blocks.attention import Attention
from l3m.model.blocks.embeddings import PosEmbed, RotaryEmbedding, TokenEmbedding
from l3m.model.blocks.feedforward import MLP
from l3m.model.blocks.heads import Classifier, LMHead
from l3m.model.blocks.layers import Linear
from l3m.model.blocks.masks import CausalMask, DocumentMask, PaddingMask, PrefixCausalMask
from l3m.model.blocks.moe import MoE
from l3m.model.blocks.norms import LayerNorm, RMSNorm
from l3m.model.blocks.transformer import Transformer

# Modules that read their `cp` attribute to work on a slice of the sequence.
CP_AWARE = (Attention, RotaryEmbedding, PosEmbed, CausalMask, PrefixCausalMask, PaddingMask, DocumentMask)
# Blocks that run correctly on a slice: token-local ones and the sequence-aware ones above.
# Extension blocks opt in with a class attribute `context_parallel_safe = True`.
CP_SAFE_BLOCKS = (*CP_AWARE, TokenEmbedding, Transformer, LMHead, Linear, MLP, MoE, LayerNorm, RMSNorm, Classifier)


class ContextParallel:
    """This rank's place in a sequence split over `size` ranks, and the gathers blocks need.

    Every rank holds `n` tokens, rank r the tokens `r*n .. r*n + n - 1`.
    """

    def __init__(self, group: dist.ProcessGroup, rank: int, size: int) -> None:
        self.group, self.rank, self.size = group, rank, size

    def offset(self, n_local: int) -> int:
        """The global position of this rank's first token."""
        return self.rank * n_local

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Every rank's slice of `x`, concatenated along `dim` in rank order; differentiable
        (each rank's gradient is the sum of what every rank's use of its slice contributed)."""
        moved = x.movedim(dim, 0).contiguous()
        return all_gather_single_autograd(moved, 0, self.group).movedim(0, dim)

    def gather_ids(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence of a tensor without gradients (token ids for masks)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def __repr__(self) -> str:
        return f"ContextParallel(rank={self.rank}, size={self.size})"


def check_cp(model: nn.Module) -> None:
    """Refuse models with a block that mixes tokens across the sequence (or cross-attends)."""
    for path, block in blocks(model):
        name = type(block).__name__
        if getattr(block, "context_parallel_safe", False):
            continue
        if not isinstance(block, CP_SAFE_BLOCKS):
            raise ValueError(
                f"context parallelism (mesh.cp > 1) splits the token sequence across ranks, but block "
                f"'{path}' ({name}) works on the whole sequence; use mesh.cp = 1 for this model"
            )
        for sub_name, sub in block.named_modules():
            if isinstance(sub, Attention) and sub.cross:
                raise ValueError(
                    f"context parallelism does not support cross-attention ('{path}.{sub_name}'); "
                    "use mesh.cp = 1 for this model"
                )


def token_shape(batch: Mapping[str, Any], keys: list[str]) -> tuple[int, int]:
    """`(B, N)` of the first integer `[B, N]` tensor among the model's input keys (token ids)."""
    for k in keys:
        v = batch.get(k)
        if isinstance(v, torch.Tensor) and v.dim() == 2 and not v.is_floating_point():
            return int(v.shape[0]), int(v.shape[1])
    raise ValueError(
        "context parallelism splits token sequences, but the model reads no integer [B, N] token ids "
        f"(inputs: {', '.join(keys) or 'none'})"
    )


def shard_batch(batch: Mapping[str, Any], cp: ContextParallel, keys: list[str]) -> dict[str, Any]:
    """This rank's slice of every per-token tensor (`[B, N]` or `[B, N, D]`, N the token length);
    per-sample values (`[B]`, images) pass whole."""
    b, n = token_shape(batch, keys)
    if n % cp.size:
        raise ValueError(f"the sequence length {n} must divide by mesh.cp = {cp.size}")
    local = n // cp.size
    start = cp.offset(local)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() in (2, 3) and tuple(v.shape[:2]) == (b, n):
            out[k] = v.narrow(1, start, local)
        else:
            out[k] = v
    return out


def apply_cp(model: nn.Module, dims: ParallelDims) -> ContextParallel:
    """Point the sequence-aware modules at this rank's `ContextParallel` and cut every batch
    that enters `model` (its input keys name the token ids)."""
    check_cp(model)
    group = dims.submesh("cp").get_group()
    cp = ContextParallel(group, dims.cp_rank, dims.cp)
    for m in model.modules():
        if isinstance(m, CP_AWARE) and not (isinstance(m, Attention) and m.cross):
            m.cp = cp
    keys = list(getattr(model, "input_keys", []))

    def cut(module: nn.Module, args: tuple) -> tuple:
        return (shard_batch(args[0], cp, keys), *args[1:])

    model.register_forward_pre_hook(cut)
    return cp

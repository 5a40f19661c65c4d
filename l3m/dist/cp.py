"""Context parallelism: each `cp` rank holds a share of the token sequence.

The share is contiguous, or load-balanced ("zigzag": chunks r and 2*cp - 1 - r of 2*cp chunks, see
`l3m.dist.cp_layout`) when the model has causal attention, so every rank's attention does the same
work; `apply_cp` picks. Positions, masks and the targets the loss reads all follow the layout.

The batch is cut along the sequence when it enters the model (`shard_batch`, run by a forward
pre-hook on the root, so training and evaluation see the same thing, and the targets the loss
reads are cut alike). Token-local layers (embeddings, feed-forwards, norms, heads) need nothing
more. The blocks that look along the sequence consult the `ContextParallel` object that
`apply_cp` sets as their `cp` attribute:

- self-attention all-gathers its keys and values over the `cp` ranks with a differentiable
  collective (the backward reduce-scatters their gradients), so each local query sees the
  whole sequence; masks are `[B, 1, n_local, N]`: rows for this rank's queries, columns for
  every key in the gathered order (`ContextParallel.key_positions`); causal attention reads, for
  each run of consecutive local queries, only the keys up to the run's end;
- rotary and absolute position tables take the rank's global positions (`positions`);
- mask blocks build only their rows (token-based masks gather the token ids first).

Which modules are which is each class's `context_parallel` trait (`l3m.traits`): "local" (runs on a
slice as it is), "aware" (reads its `cp` attribute, set here) or "whole". Blocks that pool or reorder
tokens over the whole sequence, or declare nothing, run on the gathered sequence and share their
sequence outputs out again (`l3m.dist.cp_whole`); a model whose input has no token ids gets its
sequence from such a block (a ViT's PatchEmbed). A part of a block that says "whole" (cross-attention
inside a layer) is refused with the block's and the part's names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from l3m.dist.cp_layout import SequenceLayout
from l3m.dist.cp_whole import run_whole
from l3m.dist.mesh import ParallelDims
from l3m.dist.units import blocks
from l3m.model.losses import gather_rows
from l3m.traits import context_parallel


class ContextParallel(SequenceLayout):
    """This rank's share of a sequence split over `size` ranks (`SequenceLayout`), and the gathers
    blocks need."""

    def __init__(self, group: dist.ProcessGroup, rank: int, size: int, layout: str = "contiguous") -> None:
        super().__init__(rank, size, layout)
        self.group = group

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Every rank's tokens of `x`, concatenated along `dim` in rank order (the gathered order);
        differentiable (each rank's gradient is the sum of what every rank's use of its tokens contributed)."""
        moved = x.movedim(dim, 0).contiguous()
        return gather_rows(moved, self.group).movedim(0, dim)

    def gather_whole(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence of `x` in its natural order, differentiable (see `gather`)."""
        return self.unshard(self.gather(x, dim), dim)

    def gather_ids(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Every rank's tokens of a tensor without gradients (token ids for masks), in the gathered order."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def __repr__(self) -> str:
        return f"ContextParallel(rank={self.rank}, size={self.size}, layout={self.layout!r})"


def check_cp(model: nn.Module) -> list[str]:
    """The paths of the blocks that run on the whole sequence (`l3m.dist.cp_whole`: their trait is
    "whole", or they declare none). A part of a block that says "whole" (cross-attention inside a
    layer) cannot be gathered for, and is refused."""
    whole = []
    for path, block in blocks(model):
        name = type(block).__name__
        if context_parallel(block) not in ("local", "aware"):
            whole.append(path)
            continue
        for sub_name, sub in block.named_modules():
            if sub_name and context_parallel(sub) == "whole":
                raise ValueError(f"context parallelism (mesh.cp > 1) splits the token sequence across ranks, but "
                                 f"'{path}.{sub_name}' ({type(sub).__name__}, a part of block '{path}' ({name})) "
                                 f"works on the whole sequence{_note(sub)}; use mesh.cp = 1 for this model")
    return whole


def _note(module: nn.Module) -> str:
    note = getattr(module, "context_parallel_note", None)
    return f" ({note})" if isinstance(note, str) and note else ""


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
    """This rank's tokens of every per-token tensor (`[B, N]` or `[B, N, D]`, N the token length), in
    `cp`'s layout (inputs and targets alike, so a per-token loss pairs them as on one process);
    per-sample values (`[B]`, images) pass whole."""
    b, n = token_shape(batch, keys)
    if n % cp.size:
        raise ValueError(f"the sequence length {n} must divide by mesh.cp = {cp.size}")
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() in (2, 3) and tuple(v.shape[:2]) == (b, n):
            out[k] = cp.shard(v, 1)
        else:
            out[k] = v
    cp.state.note(n // cp.size, n)
    return out


def apply_cp(model: nn.Module, dims: ParallelDims) -> ContextParallel:
    """Point the sequence-aware modules at this rank's `ContextParallel` and cut every batch
    that enters `model` (its input keys name the token ids)."""
    whole = check_cp(model)
    group = dims.submesh("cp").get_group()
    cp = ContextParallel(group, dims.cp_rank, dims.cp, choose_layout(model))
    for m in model.modules():
        if context_parallel(m) == "aware":
            m.cp = cp
    for path in whole:
        run_whole(model.get_submodule(path), cp)
    keys = list(getattr(model, "input_keys", []))

    def cut(module: nn.Module, args: tuple) -> tuple:
        cp.state.reset()
        if whole and not has_token_ids(args[0], keys):  # a block makes the sequence (PatchEmbed) and shares it out
            return args
        return (shard_batch(args[0], cp, keys), *args[1:])

    model.register_forward_pre_hook(cut)
    return cp


def has_token_ids(batch: Mapping[str, Any], keys: list[str]) -> bool:
    try:
        token_shape(batch, keys)
    except ValueError:
        return False
    return True


def choose_layout(model: nn.Module) -> str:
    """"zigzag" when the model attends causally (it balances causal attention over the ranks),
    "contiguous" otherwise (bidirectional attention costs every rank the same either way)."""
    for m in model.modules():  # causal attention, a causal Transformer, or a causal mask block
        if getattr(m, "causal", False) is True:
            return "zigzag"
    return "contiguous"

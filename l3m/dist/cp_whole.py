"""Blocks that need the whole sequence, under context parallelism: gather, run whole, share out again.

A block whose `context_parallel` trait is "whole" (or that declares none: pooling, a cls token, a
patch embedding, concatenation, ...) runs on every `cp` rank on the whole sequence:

- its inputs that are this rank's share of the current sequence (`[B, n_local, D]`, or integer
  `[B, n_local]` ids) are all-gathered (differentiably) and put back in sequence order;
- its outputs that are sequences (`[B, L, D]`) are padded at the end to a length the layout splits
  (padding keys are masked by `Attention`) and cut to this rank's share; anything else (a pooled
  `[B, D]`) is the same on every rank and passes whole.

Every rank then computes the same loss from the same whole outputs: the gathers' backward sums what
each rank's copy contributes, and the average of the ranks' gradients is the one-process gradient.
Which tensors are shares is decided by shape (the current local length, `SequenceState`), so a model
that holds two sequences of one local length at once (two towers) is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def is_share(cp: Any, x: Any) -> bool:
    """Whether `x` is this rank's share of the current sequence (by shape, see the module docstring)."""
    n = cp.state.local
    if n is None or not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[1] != n:
        return False
    return x.dim() == 3 or not x.is_floating_point()


def gather_share(cp: Any, x: torch.Tensor) -> torch.Tensor:
    """The whole sequence of a share, in sequence order, without the padding."""
    whole = cp.gather_whole(x, 1) if x.is_floating_point() else cp.unshard(cp.gather_ids(x, 1), 1)
    valid = cp.state.valid
    return whole if valid is None or valid == whole.shape[1] else whole[:, :valid].contiguous()


def share_out(cp: Any, x: torch.Tensor) -> torch.Tensor:
    """This rank's share of a whole sequence `[B, L, D]`, padded at the end to a length the layout splits."""
    length = x.shape[1]
    unit = cp.size * (2 if cp.layout == "zigzag" else 1)
    pad = -length % unit
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    cp.state.note((length + pad) // cp.size, length)
    return cp.shard(x, 1).contiguous()  # not a view: FSDP's backward hooks need a fresh tensor


def run_whole(block: nn.Module, cp: Any) -> None:
    """Hooks on `block`: gather its inputs that are shares, share out its sequence outputs."""

    def gather_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        def whole(v: Any) -> Any:
            return gather_share(cp, v) if is_share(cp, v) else v

        return tuple(whole(a) for a in args), {k: whole(v) for k, v in kwargs.items()}

    def share_outputs(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        def shared(v: Any) -> Any:
            return share_out(cp, v) if isinstance(v, torch.Tensor) and v.dim() == 3 else v

        return type(out)(shared(v) for v in out) if isinstance(out, (tuple, list)) else shared(out)

    block.register_forward_pre_hook(gather_inputs, with_kwargs=True)
    block.register_forward_hook(share_outputs, with_kwargs=True)

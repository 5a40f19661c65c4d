"""Activation checkpointing of the repeated layers: none, full, selective by op, or the MLP only.

"full" keeps only each layer's inputs and recomputes the whole layer in the backward pass.
"selective" keeps the outputs of the expensive ops (matrix multiplies, attention, and the
collectives of tensor parallelism, which are slow to redo) and recomputes the cheap ones
(norms, activations, residual adds), trading a little memory for most of the recompute.
"mlp" checkpoints only each layer's feed-forward (`layer.mlp`, dense or MoE) and keeps the
attention's activations: ml-l3m's `fsdp_layers_to_activation_checkpoint: [SwiGLUFFN]`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from l3m.dist.units import repeated_layers
from l3m.traits import ac_parts

AC_MODES = ("none", "full", "selective", "mlp")


def _saved_ops() -> set:
    """The ops whose outputs "selective" keeps (those this torch build has)."""
    names = {
        torch.ops.aten: ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm", "_scaled_dot_product_flash_attention",
                         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                         "_scaled_dot_product_flash_attention_for_cpu"),
        getattr(torch.ops, "_c10d_functional", None): ("all_reduce", "reduce_scatter_tensor",
                                                       "all_gather_into_tensor"),
    }
    ops = set()
    for namespace, wanted in names.items():
        for name in wanted:
            if namespace is not None and hasattr(namespace, name):
                ops.add(getattr(namespace, name).default)
    return ops


def save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """The selective policy: keep matmul, attention and collective outputs; recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in _SAVED else CheckpointPolicy.PREFER_RECOMPUTE


_SAVED = _saved_ops()


def checkpointed(layer: nn.Module, mode: str) -> nn.Module:
    """`layer` wrapped for `mode` ("full" or "selective"); non-reentrant, so keyword inputs work."""
    if mode == "full":
        return checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT, preserve_rng_state=True)
    if mode == "selective":
        return checkpoint_wrapper(
            layer,
            checkpoint_impl=CheckpointImpl.NO_REENTRANT,
            preserve_rng_state=True,
            context_fn=partial(create_selective_checkpoint_contexts, save_matmuls_policy),
        )
    raise ValueError(f"unknown activation_checkpointing {mode!r}; expected one of {', '.join(AC_MODES)}")


def apply_ac(model: nn.Module, mode: str) -> int:
    """Wrap every repeated layer (each transformer layer), or for a sub-layer mode the parts of every
    layer that its `ac_parts` trait names for the mode (by default its `mlp`), in place; how many
    were wrapped."""
    if mode not in AC_MODES:
        raise ValueError(f"unknown activation_checkpointing {mode!r}; expected one of {', '.join(AC_MODES)}")
    if mode == "none":
        return 0
    count = 0
    for layers in repeated_layers(model):
        done: dict[int, nn.Module] = {}  # a layer at several slots (share_layers) is wrapped once
        for i, layer in enumerate(layers):
            if id(layer) in done:
                layers[i] = done[id(layer)]
                continue
            parts = ac_parts(layer, mode)
            if parts is None:
                layers[i] = checkpointed(layer, mode)
                count += 1
            for attr in parts or ():
                if getattr(layer, attr, None) is not None:
                    setattr(layer, attr, checkpointed(getattr(layer, attr), "full"))
                    count += 1
            done[id(layer)] = layers[i]
    return count

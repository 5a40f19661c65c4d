"""The trainer's hook: a meta-device model and the `mesh`/`train` sections in, the model to train out.

Order, as torchtitan: tensor-parallel plans -> context parallelism -> activation checkpointing ->
`torch.compile` of each repeated layer -> FSDP2 (each layer, each block, the root). The model is
still on the meta device; the trainer then allocates it (`to_empty`) and initialises it, each
sharded module on full-size temporaries so that every mesh starts from the same weights.

`parallelize_criterion` does the matching work on the losses: CLIP gathers over data-parallel
ranks, the LM loss normalises by the tokens of all ranks, and learnable loss parameters have
their gradients averaged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from l3m.config import MeshConfig, TrainConfig
from l3m.dist.ac import apply_ac
from l3m.dist.cp import apply_cp
from l3m.dist.fsdp import apply_fsdp
from l3m.dist.init import init_on_full_tensors
from l3m.dist.mesh import ParallelDims, build_mesh
from l3m.dist.tp import apply_tp
from l3m.dist.units import repeated_layers


def apply_compile(model: nn.Module) -> int:
    """`torch.compile` each repeated layer (one graph, reused by every layer of the same shape)."""
    count = 0
    for layers in repeated_layers(model):
        for i, layer in enumerate(layers):
            layers[i] = torch.compile(layer)
            count += 1
    return count


def parallelize(model: nn.Module, mesh: MeshConfig, train: TrainConfig) -> nn.Module:
    """Apply the declared mesh to `model` (in place; also returned). `model.parallel_dims` then
    says where this rank stands (the loader shards data by its data-parallel rank)."""
    dims = build_mesh(mesh)
    if dims.tp > 1:
        apply_tp(model, dims.submesh("tp"))
    if dims.cp > 1:
        apply_cp(model, dims)
    apply_ac(model, train.activation_checkpointing)
    if train.compile and dims.world_size > 1:  # one process: the trainer compiles the whole model instead
        apply_compile(model)
    apply_fsdp(model, dims, train)
    init_on_full_tensors(model)
    model.parallel_dims = dims
    return model


def _average_grad_hook(group: dist.ProcessGroup, size: int):
    def hook(p: torch.Tensor) -> None:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(size)

    return hook


def parallelize_criterion(criterion: nn.Module, dims: ParallelDims | None) -> nn.Module:
    """Point the losses at the right process groups (in place; also returned)."""
    from l3m.model.losses import ClipLoss, LMCrossEntropy

    if dims is None or not dims.distributed:
        return criterion
    tokens = dims.group("dp_cp")  # ranks that hold different tokens (None: only this one)
    for name, m in criterion.named_modules():
        if isinstance(m, ClipLoss):
            if dims.cp > 1:
                raise ValueError(f"loss '{name}' (ClipLoss) compares whole samples; use mesh.cp = 1")
            m.group = dims.submesh("dp").get_group()  # tensor-parallel ranks hold the same samples
        elif isinstance(m, LMCrossEntropy):
            if m.shift and dims.cp > 1:
                raise ValueError(
                    f"loss '{name}' (LMCrossEntropy with shift = true) pairs each token with the next one, "
                    "which another context-parallel rank may hold; have the data write shifted targets "
                    "(as TextBytes does) and use shift = false"
                )
            m.group = tokens
    if tokens is not None:
        size = dims.size("dp_cp")
        for p in criterion.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_average_grad_hook(tokens, size))
    return criterion

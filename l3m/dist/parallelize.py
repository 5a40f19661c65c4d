"""The trainer's hook: a meta-device model and the `mesh`/`train` sections in, the model to train out.

Order, as torchtitan: float8 Linear layers (`train.float8`, l3m.dist.float8) -> tensor-parallel plans ->
context parallelism -> expert parallelism -> activation checkpointing -> `torch.compile` of each repeated
layer (`train.compile = "blocks"`) -> FSDP2 (MoE experts over `ep_dp`, l3m.dist.ep_fsdp; then each layer,
each block, the root) -> `torch.compile` of the whole model (`train.compile = "model"`). The model is
still on the meta device; the trainer then allocates it (`to_empty`) and initialises it, each sharded
module on full-size temporaries so that every mesh starts from the same weights.

`parallelize_criterion` does the matching work on the losses, from their traits: CLIP gathers over
data-parallel ranks, the LM loss normalises by the tokens of all ranks, and learnable loss
parameters have their gradients averaged.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from l3m.config import MeshConfig, TrainConfig, compile_mode
from l3m.dist.ac import apply_ac
from l3m.dist.cp import apply_cp
from l3m.dist.ep import apply_ep
from l3m.dist.ep_fsdp import shard_experts
from l3m.dist.float8 import apply_float8, float8_recipe, float8_refusal, float8_tp_refusal
from l3m.dist.fsdp import apply_fsdp, mp_policy
from l3m.dist.init import init_on_full_tensors
from l3m.dist.mesh import ParallelDims, build_mesh
from l3m.dist.tp import apply_tp
from l3m.dist.units import repeated_layers
from l3m.traits import context_parallel


def run_device() -> torch.device:
    """The device this rank trains on (as the trainer picks it: `L3M_DEVICE`, else its GPU, else the CPU)."""
    from l3m.train.session import pick_device

    return pick_device(int(os.environ.get("LOCAL_RANK", "0")))


def apply_compile(model: nn.Module, static: bool = False) -> int:
    """`torch.compile` each repeated layer (one graph, reused by every layer of the same shape).

    `static` (under tensor parallelism) compiles a graph per shape instead of turning to dynamic
    shapes when a second shape comes (AIMv2's decoder after its encoder): torch 2.14's tracing of a
    dynamic-shape backward through DTensors recurses without end."""
    count = 0
    for layers in repeated_layers(model):
        done: dict[int, nn.Module] = {}  # a layer at several slots (share_layers) is compiled once
        for i, layer in enumerate(layers):
            if id(layer) not in done:
                done[id(layer)] = torch.compile(layer, dynamic=False if static else None)
            layers[i] = done[id(layer)]
            count += 1
    return count


def parallelize(model: nn.Module, mesh: MeshConfig, train: TrainConfig,
                device: torch.device | None = None) -> nn.Module:
    """Apply the declared mesh, float8 and compilation to `model` (in place; also returned).
    `model.parallel_dims` then says where this rank stands (the loader shards data by its data-parallel
    rank). Raises ValueError (one line) when `train.float8` cannot run on `device`."""
    recipe = float8_recipe(train.float8)
    if recipe is not None:  # refused before the mesh exists: nothing to tear down
        why = float8_refusal(device or run_device())
        if why:
            raise ValueError(why)
    dims = build_mesh(mesh)
    mode = compile_mode(train.compile, dims.world_size, (device or run_device()).type)
    if dims.pp > 1:  # pipeline stages (l3m.dist.pp), each sharded over its data-parallel ranks
        from l3m.dist.pp_parallelize import parallelize_pipeline

        return parallelize_pipeline(model, mesh, train, dims, mode)
    if recipe is not None and dims.tp > 1:
        raise ValueError(float8_tp_refusal(dims.tp))
    if recipe is not None:  # before TP and FSDP, which shard the float8 layers' weights
        apply_float8(model, recipe, fsdp_all_gather=recipe == "tensorwise" and dims.size("dp_shard_cp") > 1)
    if dims.tp > 1:
        apply_tp(model, dims.submesh("tp"))
    if dims.cp > 1:
        apply_cp(model, dims)
    shard_ep_dp = dims.ep > 1 and dims.size("ep_dp") > 1  # experts FSDP-sharded over ep_dp (l3m.dist.ep_fsdp)
    experts = apply_ep(model, dims, reduce_replicas=not shard_ep_dp) if dims.ep > 1 else set()
    apply_ac(model, train.activation_checkpointing)
    if mode == "blocks":
        apply_compile(model, static=dims.tp > 1)
    if shard_ep_dp:
        shard_experts(model, dims, mp_policy(train), train.reshard_after_forward)
        experts = set()
    apply_fsdp(model, dims, train, ignored=experts)
    init_on_full_tensors(model)
    if mode == "model":  # lazy: traced at the first step, after the trainer allocated the weights
        model.compile()
    model.parallel_dims = dims
    return model


def _average_grad_hook(group: dist.ProcessGroup, size: int):
    def hook(p: torch.Tensor) -> None:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(size)

    return hook


def parallelize_criterion(criterion: nn.Module, dims: ParallelDims | None) -> nn.Module:
    """Point the losses at the right process groups (in place; also returned), from their traits
    (`l3m.traits`): `group_over` ("samples": the data-parallel ranks; "tokens": the ranks that hold
    different tokens) sets `group`; `context_parallel = "whole"` refuses `mesh.cp > 1`."""
    if dims is None or not dims.distributed:
        return criterion
    tokens = dims.group("dp_cp")  # ranks that hold different tokens (None: only this one)
    for name, m in criterion.named_modules():
        if dims.cp > 1 and context_parallel(m) == "whole":
            note = getattr(m, "context_parallel_note", None)
            raise ValueError(f"context parallelism (mesh.cp > 1) splits sequences across ranks, but loss '{name}' "
                             f"({type(m).__name__}) needs them whole: {note or 'use mesh.cp = 1'}")
        over = getattr(m, "group_over", None)
        if over == "samples":
            m.group = dims.submesh("dp").get_group()  # tensor-parallel ranks hold the same samples
        elif over == "tokens":
            m.group = tokens
        elif over is not None:
            raise ValueError(f"loss '{name}' ({type(m).__name__}) declares group_over = {over!r}; "
                             "expected 'samples' or 'tokens'")
    if tokens is not None:
        size = dims.size("dp_cp")
        for p in criterion.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_average_grad_hook(tokens, size))
    return criterion

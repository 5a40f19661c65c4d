"""Data parallelism with FSDP2: `fully_shard` (FSDP, or HSDP on a 2-D mesh) or `replicate`.

Units, bottom up, so that each all-gather and reduce-scatter moves one unit's parameters: each
repeated layer, then the sub-modules a block names in its `fsdp_units` trait, then each block (what
its layers and units left), then the root (everything else, and the
blocks that share a tied weight, which must live in one unit). Parameters are sharded over
`dp_shard x cp` (context-parallel ranks hold the same weights) and replicated over
`dp_replicate`; with `dp_shard x cp == 1` the model is only replicated (gradients all-reduced).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from l3m.config import TrainConfig
from l3m.dist.mesh import ParallelDims
from l3m.dist.units import blocks, declared_units, repeated_layers, shared_parameter_owners
from l3m.train.precision import DTYPES


def mp_policy(train: TrainConfig) -> MixedPrecisionPolicy:
    """Parameters gathered in `param_dtype` ("auto": the training dtype), gradients reduced in
    `reduce_dtype`; the sharded master copy stays fp32."""
    param = train.dtype if train.param_dtype == "auto" else train.param_dtype
    param_dtype = None if param == "fp32" else DTYPES[param]
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=DTYPES[train.reduce_dtype])


def data_parallel_mesh(dims: ParallelDims) -> tuple[DeviceMesh | None, str]:
    """The mesh gradients are synchronised over, and how: "shard" (FSDP), "hybrid" (HSDP, a
    2-D mesh), "replicate" (no sharding) or "none" (a single data-parallel rank)."""
    shard, rep = dims.size("dp_shard_cp"), dims.dp_replicate
    if not dims.distributed or shard * rep == 1:
        return None, "none"
    if shard > 1 and rep > 1:
        return dims.submesh("hsdp"), "hybrid"
    if shard > 1:
        return dims.submesh("dp_shard_cp"), "shard"
    return dims.submesh("dp_replicate"), "replicate"


def _own_params(module: nn.Module, inner: list[nn.Module]) -> bool:
    """Whether `module` has parameters outside the already wrapped `inner` modules."""
    taken = {id(p) for m in inner for p in m.parameters()}
    return any(id(p) not in taken for p in module.parameters())


def wrapper(dims: ParallelDims, train: TrainConfig, ignored: set[nn.Parameter] | None = None
            ) -> tuple[Callable[..., None] | None, str]:
    """`(wrap, kind)`: `wrap(module, root=False)` shards (or replicates) one unit over the data-parallel
    ranks as `train` says (None when there is nothing to do); `kind` as `data_parallel_mesh` says."""
    mesh, kind = data_parallel_mesh(dims)
    if mesh is None:
        return None, kind
    policy = mp_policy(train)

    def wrap(module: nn.Module, root: bool = False) -> None:
        if kind == "replicate":
            replicate(module, mesh=mesh, mp_policy=policy, ignored_params=ignored or None)
        else:
            reshard = train.reshard_after_forward and not root  # the root's weights are needed first in backward
            fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard,
                        ignored_params=ignored or None)

    return wrap, kind


def apply_fsdp(model: nn.Module, dims: ParallelDims, train: TrainConfig,
               ignored: set[nn.Parameter] | None = None) -> str:
    """Wrap `model` in place for data parallelism; the kind applied (see `data_parallel_mesh`).
    `ignored` parameters are left alone (expert-parallel experts, already split by expert)."""
    wrap, kind = wrapper(dims, train, ignored)
    if wrap is None:
        return kind
    shared = shared_parameter_owners(model)
    # Layers of blocks that share parameters (`share`, `tie`) stay in the root with their blocks; a
    # layer repeated at several slots (`share_layers`) is one unit, wrapped once.
    in_shared = {id(p) for _, b in blocks(model) if id(b) in shared for p in b.parameters()}
    wrapped: list[nn.Module] = []
    for layers in repeated_layers(model):
        for layer in layers:
            if _own_params(layer, wrapped) and not any(id(p) in in_shared for p in layer.parameters()):
                wrap(layer)
                wrapped.append(layer)
    for path, block in blocks(model):
        if id(block) in shared:
            continue
        for unit in declared_units(block, path):  # the block's `fsdp_units` trait
            if _own_params(unit, wrapped):
                wrap(unit)
                wrapped.append(unit)
        if _own_params(block, wrapped):
            wrap(block)
            wrapped.append(block)
    wrap(model, root=True)
    return kind

"""Parallelism per the declared mesh: FSDP2/HSDP, tensor and context parallelism, activation
checkpointing (see `parallelize` for the order they are applied in)."""

from l3m.dist.cp import ContextParallel, shard_batch
from l3m.dist.mesh import MESH_DIMS, ParallelDims, build_mesh, init_distributed
from l3m.dist.parallelize import parallelize, parallelize_criterion

__all__ = [
    "MESH_DIMS",
    "ContextParallel",
    "ParallelDims",
    "build_mesh",
    "init_distributed",
    "parallelize",
    "parallelize_criterion",
    "shard_batch",
]

"""The process group and the device mesh of a `mesh { dp_replicate, dp_shard, cp, tp }` declaration.

Ranks are laid out row-major over `(dp_replicate, dp_shard, cp, tp)`, as `init_device_mesh`
does: tensor-parallel ranks are neighbours (one node's fast links), data-parallel replicas are
furthest apart. Three flattened sub-meshes serve the other parts, as in torchtitan:

- `dp` (dp_replicate x dp_shard): ranks that hold different samples (the data loader, ClipLoss);
- `dp_shard_cp` (dp_shard x cp): what FSDP shards parameters over (context-parallel ranks hold
  the same weights, so they share the sharding);
- `dp_cp` (dp_replicate x dp_shard x cp): every rank that holds different tokens, over which
  gradients are averaged and token counts are summed;
- `hsdp`: the 2-D (dp_replicate, dp_shard_cp) mesh of hybrid sharding.

Expert parallelism (`ep`) is not a world dimension of its own: it borrows the innermost `ep` ranks
of `dp_shard_cp` (as torchtitan does), ranks that hold different tokens, so the all-to-all sends each
token to the rank that owns its expert and no rank computes a token twice. Two more sub-meshes:

- `ep`: the ranks that split the experts between them (size ep);
- `ep_dp` (dp_replicate x dp_shard_cp / ep): the ranks that hold the same experts, over which FSDP
  shards them (`l3m.dist.ep_fsdp`) and averages their gradients;
- `ep_tp` (with `tp > 1`): the 2-D `(ep, tp)` mesh of experts split by expert and by hidden unit.

Every coordinate is plain arithmetic on the rank, so the data loader can be sharded before any
process group exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from l3m.config import MeshConfig, resolve_mesh

MESH_DIMS = ("dp_replicate", "dp_shard", "cp", "tp")
# Flattened sub-meshes: name -> the mesh dimensions it spans.
FLAT_DIMS = {
    "dp": ("dp_replicate", "dp_shard"),
    "dp_shard_cp": ("dp_shard", "cp"),
    "dp_cp": ("dp_replicate", "dp_shard", "cp"),
}
DEFAULT_TIMEOUT_S = 600.0


def dist_timeout() -> timedelta:
    """How long a collective may wait for a peer before failing (`L3M_DIST_TIMEOUT` seconds):
    a rank that dies mid-step makes the others fail instead of hanging."""
    return timedelta(seconds=float(os.environ.get("L3M_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))


def init_distributed(device: torch.device | str | None = None) -> torch.device:
    """Start the default process group from the torchrun environment when there is more than
    one process and none is running yet; this rank's device.

    The backend follows the hardware: NCCL on CUDA devices, gloo on the CPU. `device` defaults
    to this rank's GPU when there is one, else the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device is None:
        device = torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=dist_timeout(),
                                device_id=device if device.type == "cuda" else None)
    return device


def mesh_device_type() -> str:
    """The device type collectives run on: the one the default process group was started for
    (NCCL: the GPUs; gloo: the CPU)."""
    return "cuda" if "nccl" in str(dist.get_backend()).lower() else "cpu"


def resolve(mesh: MeshConfig, world_size: int) -> dict[str, int]:
    """The mesh sizes, with `-1` filled in; a ValueError that names the mesh when they do not fit."""
    try:
        return resolve_mesh(mesh, world_size)
    except ValueError as e:
        raise ValueError(f"mesh {{ {', '.join(f'{k} = {getattr(mesh, k)}' for k in MESH_DIMS)} }} "
                         f"cannot run on {world_size} process(es): {e}") from None


@dataclass
class ParallelDims:
    """The resolved mesh sizes, this rank's place in them, and (with several processes) the meshes."""

    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int
    ep: int = 1
    pp: int = 1  # pipeline stages: the outermost dimension (l3m.dist.pp)
    rank: int = 0
    meshes: dict[str, DeviceMesh] = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp

    def size(self, name: str) -> int:
        """The size of a mesh dimension or of a flattened sub-mesh."""
        if name == "ep_dp":
            return self.size("dp_cp") // self.ep
        if name == "ep":
            return self.ep
        out = 1
        for d in FLAT_DIMS.get(name, (name,)):
            out *= getattr(self, d)
        return out

    def coordinate(self, name: str) -> int:
        """This rank's index along a mesh dimension or a flattened sub-mesh."""
        if name == "ep":  # the innermost ranks of dp_shard_cp
            return self.coordinate("dp_shard_cp") % self.ep
        if name == "ep_dp":
            return self.coordinate("dp_cp") // self.ep
        coords: dict[str, int] = {}
        rest = self.rank
        for d in reversed(MESH_DIMS):
            coords[d] = rest % getattr(self, d)
            rest //= getattr(self, d)
        coords["pp"] = rest  # the outermost dimension: what is left
        out = 0
        for d in FLAT_DIMS.get(name, (name,)):
            out = out * getattr(self, d) + coords[d]
        return out

    # the data-parallel view that the loader and the losses need

    @property
    def dp_size(self) -> int:
        return self.size("dp")

    @property
    def dp_rank(self) -> int:
        return self.coordinate("dp")

    @property
    def cp_rank(self) -> int:
        return self.coordinate("cp")

    @property
    def distributed(self) -> bool:
        return bool(self.meshes)

    def submesh(self, name: str) -> DeviceMesh:
        """A mesh dimension, a flattened sub-mesh, or "hsdp" (the 2-D `dp_replicate x dp_shard_cp`)."""
        if not self.meshes:
            raise RuntimeError("there is no device mesh in a single process")
        return self.meshes[name]

    def group(self, name: str) -> dist.ProcessGroup | None:
        """The process group of a dimension or flattened sub-mesh; None when it has one rank."""
        if not self.meshes or self.size(name) == 1:
            return None
        return self.submesh(name).get_group()


def _meshes(device_type: str, sizes: dict[str, int]) -> dict[str, DeviceMesh]:
    """Every mesh the parts need, each an unflattening of one world mesh (so they share a root,
    as FSDP2 requires of the data-parallel and tensor-parallel meshes it composes)."""
    r, s, c, t = (sizes[d] for d in MESH_DIMS)
    ep = sizes.get("ep", 1)
    if sizes.get("pp", 1) > 1:
        return _pipeline_meshes(device_type, sizes)
    world = init_device_mesh(device_type, (r * s * c * t,), mesh_dim_names=("world",))
    full = world._unflatten(0, (r, s, c, t), MESH_DIMS)
    dense = world._unflatten(0, (r, s * c, t), ("dp_replicate", "dp_shard_cp", "tp"))
    out = {d: full[d] for d in MESH_DIMS}
    out["tp"] = dense["tp"]
    out["dp_shard_cp"] = dense["dp_shard_cp"]
    out["hsdp"] = dense["dp_replicate", "dp_shard_cp"]
    out["dp"] = world._unflatten(0, (r * s, c * t), ("dp", "cp_tp"))["dp"]
    out["dp_cp"] = world._unflatten(0, (r * s * c, t), ("dp_cp", "tp"))["dp_cp"]
    if ep > 1:
        experts = world._unflatten(0, (r * s * c // ep, ep, t), ("ep_dp", "ep", "tp"))
        out["ep"], out["ep_dp"] = experts["ep"], experts["ep_dp"]
        if t > 1:  # experts split by expert and by hidden unit (l3m.dist.ep_tp)
            out["ep_tp"] = experts["ep", "tp"]
    return out


def _pipeline_meshes(device_type: str, sizes: dict[str, int]) -> dict[str, DeviceMesh]:
    """The meshes of `_meshes` under a leading `pp` dimension: each pipeline stage's ranks have the
    data-parallel meshes among themselves (a sub-mesh picks this rank's stage), and `pp` joins the
    ranks at the same place of every stage."""
    p = sizes["pp"]
    r, s, c, t = (sizes[d] for d in MESH_DIMS)
    world = init_device_mesh(device_type, (p * r * s * c * t,), mesh_dim_names=("world",))
    full = world._unflatten(0, (p, r, s, c, t), ("pp", *MESH_DIMS))
    dense = world._unflatten(0, (p, r, s * c, t), ("pp", "dp_replicate", "dp_shard_cp", "tp"))
    out = {d: full[d] for d in ("pp", *MESH_DIMS)}
    out["tp"] = dense["tp"]
    out["dp_shard_cp"] = dense["dp_shard_cp"]
    out["hsdp"] = dense["dp_replicate", "dp_shard_cp"]
    out["dp"] = world._unflatten(0, (p, r * s, c * t), ("pp", "dp", "cp_tp"))["dp"]
    out["dp_cp"] = world._unflatten(0, (p, r * s * c, t), ("pp", "dp_cp", "tp"))["dp_cp"]
    return out


def build_mesh(mesh: MeshConfig, world_size: int | None = None, device_type: str | None = None) -> ParallelDims:
    """The device meshes of the declared dimensions (and of the flattened sub-meshes).

    In a single process no mesh is built: `ParallelDims.meshes` is empty and every size is 1.
    """
    distributed = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if distributed else 1
    sizes = resolve(mesh, world_size)
    dims = ParallelDims(**sizes, rank=dist.get_rank() if distributed else 0)
    if world_size == 1:
        return dims
    if not distributed:
        raise RuntimeError(f"a mesh of {world_size} ranks needs a process group: launch with torchrun")
    dims.meshes = _meshes(device_type or mesh_device_type(), sizes)
    return dims

"""The mesh: sizes from the file, a clear error when they do not fit, and coordinates that agree
with the device meshes torch builds."""

from __future__ import annotations

import pytest

from l3m.config import MeshConfig
from l3m.dist import MESH_DIMS, build_mesh
from l3m.dist.mesh import FLAT_DIMS, ParallelDims, resolve


def test_resolve_fills_the_free_dimension():
    assert resolve(MeshConfig(dp_replicate=2, dp_shard=-1, tp=2, cp=1), 16) == {
        "dp_replicate": 2, "dp_shard": 4, "cp": 1, "tp": 2}


@pytest.mark.parametrize("mesh, world, words", [
    (MeshConfig(tp=3), 2, "does not divide the world size 2"),
    (MeshConfig(dp_shard=2, tp=2), 8, "multiply to 4, but the world size is 8"),
    (MeshConfig(dp_shard=-1, tp=-1), 4, "only one mesh dimension may be -1"),
    (MeshConfig(cp=0), 4, "cp = 0 must be a positive integer"),
])
def test_a_mesh_that_does_not_fit_is_refused_with_the_reason(mesh, world, words):
    with pytest.raises(ValueError) as e:
        resolve(mesh, world)
    assert f"cannot run on {world} process(es)" in str(e.value)
    assert words in str(e.value)
    assert "mesh { dp_replicate = " in str(e.value)


def test_single_process_has_no_mesh():
    dims = build_mesh(MeshConfig())
    assert not dims.distributed
    assert (dims.dp_size, dims.dp_rank, dims.cp_rank, dims.world_size) == (1, 0, 0, 1)
    with pytest.raises(ValueError, match="cannot run on 1 process"):
        build_mesh(MeshConfig(tp=2))


def test_coordinates_are_row_major_with_tp_innermost():
    dims = ParallelDims(dp_replicate=2, dp_shard=3, cp=2, tp=2, rank=17)  # 17 = ((1*3 + 1)*2 + 0)*2 + 1
    assert [dims.coordinate(d) for d in MESH_DIMS] == [1, 1, 0, 1]
    assert dims.coordinate("dp") == 4 and dims.dp_size == 6
    assert dims.coordinate("dp_shard_cp") == 2 and dims.size("dp_shard_cp") == 6
    assert dims.coordinate("dp_cp") == 8 and dims.size("dp_cp") == 12
    # Tensor- and context-parallel peers read the same data: one data-parallel rank for all four.
    peers = [ParallelDims(2, 3, 2, 2, rank=r).dp_rank for r in range(16, 20)]
    assert peers == [4, 4, 4, 4]


@pytest.mark.parametrize("rank", [0, 6, 11, 15])
def test_coordinates_match_the_device_meshes(fake_world, rank):
    fake_world(16, rank)
    dims = build_mesh(MeshConfig(dp_replicate=2, dp_shard=2, cp=2, tp=2))
    assert dims.distributed and dims.rank == rank
    for name in (*MESH_DIMS, *FLAT_DIMS):
        mesh = dims.submesh(name)
        assert mesh.size() == dims.size(name), name
        assert mesh.get_local_rank() == dims.coordinate(name), name
    hsdp = dims.submesh("hsdp")
    assert hsdp.mesh_dim_names == ("dp_replicate", "dp_shard_cp")
    assert tuple(hsdp.shape) == (2, 4)
    assert dims.group("tp") is not None
    assert ParallelDims(1, 2, 1, 1, meshes={"x": hsdp}).group("cp") is None  # one rank: no group

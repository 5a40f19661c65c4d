"""The `ep` mesh setting: it borrows ranks from dp_shard x cp, coordinates that agree with the meshes torch
builds, and a clear error (E601 in lint and plan) when it does not fit the mesh or the model's experts."""

from __future__ import annotations

import pytest
from torch import nn

from l3m.config import MeshConfig, resolve_mesh
from l3m.dist.ep import check_ep
from l3m.dist.mesh import ParallelDims, build_mesh
from l3m.model.blocks.moe import MoE
from l3m.traits import expert_parallel


def test_ep_is_taken_from_dp_shard_and_cp():
    assert resolve_mesh(MeshConfig(dp_shard=-1, cp=2, ep=4), 8) == {
        "dp_replicate": 1, "dp_shard": 4, "tp": 1, "cp": 2, "ep": 4}
    assert "ep" not in resolve_mesh(MeshConfig(dp_shard=2), 2)  # ep = 1 adds nothing
    with pytest.raises(ValueError, match=r"ep = 4 must divide dp_shard x cp = 2"):
        resolve_mesh(MeshConfig(dp_replicate=2, dp_shard=2, ep=4), 4)  # replicas hold the same weights
    with pytest.raises(ValueError, match="ep = 0 must be a positive integer"):
        resolve_mesh(MeshConfig(dp_shard=2, ep=0), 2)


def test_ep_coordinates_are_the_innermost_token_ranks():
    # world 16 = dp_replicate 2 x dp_shard 2 x cp 2 x tp 2, ep = 4: ep groups run over (dp_shard, cp)
    dims = [ParallelDims(dp_replicate=2, dp_shard=2, cp=2, tp=2, ep=4, rank=r) for r in range(16)]
    assert [d.coordinate("ep") for d in dims[:8]] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [d.coordinate("ep_dp") for d in dims[::2]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (dims[0].size("ep"), dims[0].size("ep_dp")) == (4, 2)


def test_ep_meshes_match_the_coordinates(fake_world):
    for rank in (0, 3, 5):
        fake_world(8, rank)
        dims = build_mesh(MeshConfig(dp_replicate=2, dp_shard=2, ep=2, tp=2), 8, device_type="cpu")
        ep, ep_dp = dims.submesh("ep"), dims.submesh("ep_dp")
        assert ep.size() == 2 and ep.get_local_rank() == dims.coordinate("ep")
        assert ep_dp.size() == 2 and ep_dp.get_local_rank() == dims.coordinate("ep_dp")
        assert rank in ep.mesh.tolist() and rank in ep_dp.mesh.tolist()
        assert not set(ep.mesh.tolist()) & set(ep_dp.mesh.tolist()) - {rank}


def test_moe_declares_its_expert_weights_as_a_trait():
    moe = MoE(8, 16, num_experts=4)
    assert expert_parallel(moe) == ("w1", "w3", "w2")
    check_ep(nn.Sequential(moe), 2)
    with pytest.raises(ValueError, match="over 3 ranks cannot split the 4 experts of '0'"):
        check_ep(nn.Sequential(moe), 3)


def test_lint_refuses_an_ep_that_does_not_fit(compile_text):
    head = "l3m 1\n"
    assert compile_text(head + "mesh { dp_shard = -1, ep = 4 }\n").ok  # dp_shard can grow to fit
    bad = compile_text(head + "mesh { dp_shard = 2, ep = 4 }\n")
    (d,) = [d for d in bad.diagnostics if d.code == "E601"]
    assert "ep = 4 must divide dp_shard x cp = 2" in d.message
    assert not compile_text(head + "mesh { dp_shard = -1, ep = 4 }\n", world_size=2).ok

"""MoE experts under tensor parallelism and expert FSDP, without processes: the MoE's tensor-parallel plan
and its refusal, the dim expert FSDP shards along, the plan's expert bytes per rank on each mesh, and the
2-D `(ep, tp)` mesh of experts split both ways."""

from __future__ import annotations

from dataclasses import replace

import pytest
from torch import nn

from l3m.config import MeshConfig
from l3m.dist.ep_fsdp import even_dim
from l3m.dist.ep_tp import ExpertTensorParallel
from l3m.dist.mesh import ParallelDims, build_mesh
from l3m.dist.tp import check_tp
from l3m.model.blocks.moe import MoE
from l3m.plan_experts import expert_memory, format_experts


def test_moe_plans_its_experts_over_hidden_units():
    moe = MoE(8, 16, num_experts=4)
    (style,) = moe.tp_plan().values()
    assert isinstance(style, ExpertTensorParallel)
    assert style.shard_dims == {"w1": 1, "w3": 1, "w2": 2}  # [E, hidden, dim] and [E, dim, hidden]
    check_tp(nn.Sequential(moe), 4)
    with pytest.raises(ValueError, match=r"over 3 ranks cannot split '0' \(MoE\): it has experts of 16 hidden "
                                         r"units, which 3 ranks cannot split evenly"):
        check_tp(nn.Sequential(moe), 3)


def test_expert_fsdp_shards_by_expert_when_it_can():
    assert even_dim([4, 32, 16], 2) == 0  # two experts per rank: one each
    assert even_dim([1, 32, 16], 2) == 1  # one expert: split its hidden units
    assert even_dim([3, 5, 7], 2) is None  # nothing even: FSDP's padded dim 0


def test_plan_counts_expert_bytes_per_rank():
    model = nn.Sequential(MoE(8, 16, num_experts=4), MoE(8, 16, num_experts=2))
    whole = 4 * 3 * (4 + 2) * 16 * 8  # fp32 x (w1, w3, w2) x experts x hidden x dim
    mem = expert_memory(model, {"dp_shard": 4, "ep": 2})
    assert mem["total"] == whole and mem["without_ep_dp_fsdp"] == whole // 2
    assert mem["per_rank"] == whole // 4  # ep = 2 experts, then FSDP over ep_dp = 2
    assert expert_memory(model, {"dp_shard": 4, "ep": 2, "tp": 2})["per_rank"] == whole // 8
    assert expert_memory(model, {"dp_shard": 2, "ep": 2})["per_rank"] == whole // 2  # ep_dp = 1: nothing to shard
    assert expert_memory(model, {"dp_shard": 2, "tp": 2})["per_rank"] == whole // 4  # ordinary FSDP x tp
    assert expert_memory(nn.Linear(2, 2), {"dp_shard": 2}) is None
    (line,) = format_experts({"experts": mem}, lambda b: f"{b} B")
    assert line.split()[:4] == ["expert", "params", "per", "rank"] and "FSDP over ep_dp=2" in line


def test_experts_split_by_expert_and_hidden_unit_get_a_2d_mesh(fake_world):
    for rank in (0, 5):
        fake_world(8, rank)
        dims = build_mesh(MeshConfig(dp_shard=4, ep=2, tp=2), 8, device_type="cpu")
        mesh = dims.submesh("ep_tp")
        assert mesh.mesh_dim_names == ("ep", "tp") and tuple(mesh.shape) == (2, 2)
        assert list(mesh.get_coordinate()) == [dims.coordinate("ep"), dims.coordinate("tp")]
        peers = mesh.mesh.flatten().tolist()  # the ranks that hold this rank's experts' other slices
        assert rank in peers and {ep_dp_of(dims, r) for r in peers} == {dims.coordinate("ep_dp")}
    assert "ep_tp" not in build_mesh(MeshConfig(dp_shard=8, ep=2), 8, device_type="cpu").meshes  # tp = 1


def ep_dp_of(dims: ParallelDims, rank: int) -> int:
    return replace(dims, rank=rank, meshes={}).coordinate("ep_dp")

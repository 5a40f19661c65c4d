"""How `parallelize` wraps a model, checked as one rank of a fake world (no processes, no data
moves): the layouts of FSDP, HSDP, replication, tensor and context parallelism, the wrapping
units, weight ties, and initialisation that matches one process."""

from __future__ import annotations

import math

import pytest
import torch
from dist_utils import LLM
from torch import nn
from torch.distributed._composable.replicate_with_fsdp import ReplicateModule
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Replicate, Shard

from l3m.config import MeshConfig, TrainConfig
from l3m.dist import build_mesh, parallelize, parallelize_criterion
from l3m.model.build import build_model, materialize
from l3m.model.losses import ClipLoss, LMCrossEntropy

QKV = "gpt.trunk.blocks.layers.{i}.attn.qkv.weight"


@pytest.fixture
def program(compile_text, tmp_path):
    def make(overrides=(), text=None):
        compiled = compile_text(text or LLM.format(corpus=tmp_path / "corpus.txt"), list(overrides))
        assert compiled.ok, [d.message for d in compiled.errors]
        return compiled

    return make


def built(compiled, mesh: MeshConfig | None, train: TrainConfig | None = None, seed: int = 0) -> nn.Module:
    model = build_model(compiled.program, device="meta", schedule=compiled.flow.model_order())
    if mesh is not None:
        parallelize(model, mesh, train or TrainConfig())
    torch.manual_seed(seed)
    return materialize(model, "cpu")


def param(model: nn.Module, name: str) -> torch.Tensor:
    """A parameter by the name the file gives it (wrapper segments skipped)."""
    from l3m.train.optim import clean_name

    return next(p for n, p in model.named_parameters() if clean_name(n) == name)


def test_fsdp_with_tensor_parallelism(fake_world, program):
    fake_world(4, 3)  # rank 3: dp_shard rank 1, tp rank 1
    model = built(program(), MeshConfig(dp_shard=2, tp=2), TrainConfig(activation_checkpointing="selective"))
    dims = model.parallel_dims
    assert (dims.dp_rank, dims.dp_size) == (1, 2)
    layers = model.gpt.trunk.blocks.layers
    assert all(isinstance(layer, CheckpointWrapper) and isinstance(layer, FSDPModule) for layer in layers)
    assert isinstance(model, FSDPModule) and isinstance(model.gpt.trunk.blocks, FSDPModule)
    assert isinstance(model.gpt.preprocessor.pos, FSDPModule)
    # The tied embedding and head share one weight, so they are sharded with the root, not alone.
    assert not isinstance(model.gpt.preprocessor.embed, FSDPModule)
    assert not isinstance(model.gpt.head.lm, FSDPModule)
    assert model.gpt.head.lm.proj.weight is model.gpt.preprocessor.embed.emb.weight

    qkv = param(model, QKV.format(i=0))
    assert isinstance(qkv, DTensor) and qkv.device_mesh.mesh_dim_names == ("dp_shard_cp", "tp")
    assert qkv.placements[1] == Shard(0)
    assert qkv.to_local().shape == (qkv.shape[0] // 4, 32)  # split over 2 tensor x 2 data ranks
    norm = param(model, "gpt.trunk.blocks.layers.0.norm1.weight")  # no tensor-parallel plan: FSDP only
    assert norm.device_mesh.mesh_dim_names == ("dp_shard_cp",) and norm.placements == (Shard(0),)


def test_hsdp_and_replication(fake_world, program):
    fake_world(4, 2)
    model = built(program(), MeshConfig(dp_replicate=2, dp_shard=2))
    qkv = param(model, QKV.format(i=1))
    assert qkv.device_mesh.mesh_dim_names == ("dp_replicate", "dp_shard_cp")
    assert qkv.placements == (Replicate(), Shard(0))
    assert model.parallel_dims.dp_rank == 2

    fake_world(2, 1)
    model = built(program(), MeshConfig(dp_replicate=2, dp_shard=1))
    assert isinstance(model, ReplicateModule) and callable(model.set_requires_gradient_sync)
    qkv = param(model, QKV.format(i=1))
    assert qkv.placements == (Replicate(),) and qkv.to_local().shape == qkv.shape


def _slice(full: torch.Tensor, dim: int, rank: int, ranks: int) -> torch.Tensor:
    """Rank `rank`'s part of `full` split like torch.chunk (what FSDP and tensor parallelism use)."""
    size = math.ceil(full.shape[dim] / ranks)
    return full.narrow(dim, min(rank * size, full.shape[dim]), max(0, min(size, full.shape[dim] - rank * size)))


@pytest.mark.parametrize("mesh", ["fsdp", "tp"])
def test_sharded_init_is_a_slice_of_the_one_process_init(fake_world, program, mesh):
    compiled = program()
    whole = built(compiled, None, seed=3)
    fake_world(2, 1)
    sharded = built(compiled, MeshConfig(dp_shard=2) if mesh == "fsdp" else MeshConfig(tp=2), seed=3)
    checked = 0
    for name, full in whole.named_parameters():
        p = param(sharded, name)
        if not isinstance(p, DTensor) or p.placements == (Replicate(),):  # replicated: the whole tensor
            assert torch.equal(getattr(p, "_local_tensor", p), full), name
            continue
        shard_dims = [pl.dim for pl in p.placements if isinstance(pl, Shard)]
        assert len(shard_dims) == 1, (name, p.placements)
        assert torch.equal(p.to_local(), _slice(full, shard_dims[0], 1, 2)), name
        checked += 1
    assert checked >= 8


def test_context_parallel_wiring(fake_world, program):
    from l3m.model.blocks.attention import Attention
    from l3m.model.blocks.embeddings import PosEmbed, RotaryEmbedding

    fake_world(2, 1)
    model = built(program(), MeshConfig(dp_shard=1, cp=2))
    aware = [m for m in model.modules() if isinstance(m, (Attention, PosEmbed, RotaryEmbedding))]
    assert len(aware) == 4 and all(m.cp is not None and (m.cp.rank, m.cp.size) == (1, 2) for m in aware)
    assert aware[0].cp.layout == "zigzag"  # causal attention: the load-balanced layout
    # Context-parallel ranks hold the same weights, so FSDP shards them over the cp ranks.
    assert param(model, QKV.format(i=0)).device_mesh.mesh_dim_names == ("dp_shard_cp",)
    assert model.parallel_dims.dp_size == 1


def test_context_parallel_runs_whole_sequence_blocks_whole(fake_world, program):
    vit = """l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 4) -> image, label }
model vit {
  preprocessor { patch: PatchEmbed(dim = 16, patch = 4, in_chans = 3) image -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  postprocessor { pool: AvgPool() x -> x }
  head         { cls: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 1e-2)
"""
    fake_world(2, 0)
    model = built(program(text=vit), MeshConfig(dp_shard=1, cp=2))
    hooked = [p for p in ("vit.preprocessor.patch", "vit.postprocessor.pool", "vit.trunk.blocks")
              if any(h.__name__ == "gather_inputs" for h in model.get_submodule(p)._forward_pre_hooks.values())]
    assert hooked == ["vit.preprocessor.patch", "vit.postprocessor.pool"]  # gathered for; the trunk runs on shares
    attn = next(m for m in model.modules() if getattr(m, "cp", None) is not None)
    assert attn.cp.layout == "contiguous"  # bidirectional attention: nothing to balance


def test_criterion_groups(fake_world):
    fake_world(4, 1)
    crit = nn.ModuleDict({"clip": ClipLoss(), "ce": LMCrossEntropy()})
    parallelize_criterion(crit, build_mesh(MeshConfig(dp_shard=2, tp=2)))
    assert crit["clip"].group.size() == 2  # the data-parallel ranks (tensor-parallel peers share samples)
    assert crit["ce"].group.size() == 2

    fake_world(2, 1)
    crit = nn.ModuleDict({"ce": LMCrossEntropy()})
    parallelize_criterion(crit, build_mesh(MeshConfig(dp_shard=1, tp=2)))
    assert crit["ce"].group is None  # one data-parallel rank: nothing to normalise over

    fake_world(2, 1)
    for loss, words in [(LMCrossEntropy(shift=True), "shift = true"), (ClipLoss(), "use mesh.cp = 1")]:
        with pytest.raises(ValueError, match=words):
            parallelize_criterion(nn.ModuleDict({"l": loss}), build_mesh(MeshConfig(dp_shard=1, cp=2)))


def test_tensor_parallel_size_must_split_whole_head_groups(fake_world, program):
    fake_world(4, 0)
    with pytest.raises(ValueError, match=r"'.*attn' \(Attention\): it needs its key/value heads \(2\) to divide by 4"):
        built(program(), MeshConfig(dp_shard=1, tp=4))


def test_mixed_precision_policy_follows_the_train_section():
    from l3m.dist.fsdp import mp_policy

    auto = mp_policy(TrainConfig(dtype="bf16"))
    assert (auto.param_dtype, auto.reduce_dtype) == (torch.bfloat16, torch.float32)
    explicit = mp_policy(TrainConfig(dtype="bf16", param_dtype="fp32", reduce_dtype="bf16"))
    assert (explicit.param_dtype, explicit.reduce_dtype) == (None, torch.bfloat16)  # None: kept as stored

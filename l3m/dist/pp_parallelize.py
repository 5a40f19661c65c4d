"""`l3m.dist.parallelize` for `mesh.pp > 1`: split the model, keep this rank's stages, shard them.

Order: activation checkpointing and `compile = "blocks"` on the whole (meta) model, then the split
(l3m.dist.pp replaces what other ranks own by placeholders), then FSDP2 on each stage: its layers,
its whole blocks, and the stage module as the root (the pipeline schedule runs the stage modules,
and torch's PipelineStage drives FSDP's gradient sync across micro-batches through that root).
"""

from __future__ import annotations

from torch import nn

from l3m.config import MeshConfig, TrainConfig
from l3m.dist.ac import apply_ac
from l3m.dist.fsdp import wrapper
from l3m.dist.init import init_on_full_tensors
from l3m.dist.mesh import ParallelDims
from l3m.dist.pp import Pipeline, PipelineChunk, choose_split, cross_stage_ties, refusal
from l3m.model.core import MetaModel
from l3m.traits import layer_lists


def _layers_in(block: nn.Module) -> list[nn.Module]:
    out: list[nn.Module] = []
    for owner in block.modules():
        for attr in layer_lists(owner):
            m = owner._modules.get(attr)
            if isinstance(m, nn.ModuleList):
                out += [layer for layer in m if layer not in out]
    return out


def shard_chunks(chunks: list[PipelineChunk], dims: ParallelDims, train: TrainConfig) -> str:
    """FSDP2 (or replication) of each stage over its data-parallel ranks; the kind applied."""
    wrap, kind = wrapper(dims, train)
    if wrap is None:
        return kind

    for chunk in chunks:
        holders: dict[int, int] = {}  # a parameter two parts share (a tie inside the stage) stays with the root
        for part in chunk.parts:
            for p in part.parameters():
                holders[id(p)] = holders.get(id(p), 0) + 1
        done: set[int] = set()
        for part in chunk.parts:
            if any(holders[id(p)] > 1 for p in part.parameters()):
                continue
            for layer in [*_layers_in(part), part]:
                fresh = [p for p in layer.parameters() if id(p) not in done]
                if fresh:
                    wrap(layer)
                    done.update(id(p) for p in fresh)
        wrap(chunk, root=True)
    return kind


def parallelize_pipeline(model: MetaModel, mesh: MeshConfig, train: TrainConfig, dims: ParallelDims,
                         mode: str) -> MetaModel:
    """This rank's stages of `model`, sharded; `model.pipeline` runs them (l3m.dist.pp_step)."""
    if not isinstance(model, MetaModel):
        raise ValueError("mesh.pp > 1 splits a MetaModel (a model built from a .l3m file)")
    why = refusal(mesh, train, dims, mode)
    split = None if why else choose_split(model, mesh, flops=getattr(model, "pp_flops", None))
    why = why or cross_stage_ties(model, split)
    if why:
        raise ValueError(why)
    apply_ac(model, train.activation_checkpointing)
    if mode == "blocks":
        from l3m.dist.parallelize import apply_compile

        apply_compile(model)
    pipe = Pipeline(model, split, dims, mesh)
    shard_chunks(pipe.make_chunks(), dims, train)
    init_on_full_tensors(model)
    model.parallel_dims = dims
    model.pipeline = pipe
    return model

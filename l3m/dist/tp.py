"""Tensor parallelism from the plans the blocks carry (`tp_plan()`), applied with `parallelize_module`.

Each block class says how its own layers split (attention: column-wise q/k/v, row-wise output;
feed-forward: column-wise then row-wise; token embedding: row-wise; LM head: column-wise, its
logits either gathered or left sharded over the vocabulary for a vocab-parallel loss). Layers
without a plan (norms, position tables, MoE experts) stay replicated: every tensor-parallel rank
computes them on the same inputs and so holds the same gradients.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import parallelize_module

from l3m.model.blocks.attention import Attention
from l3m.model.blocks.layers import collect_tp_plan
from l3m.model.core import MetaModel


def _kv_groups(attn: Attention) -> int:
    """How many key/value head groups an attention module has (a column-wise shard must hold
    whole groups, so this must divide by the tensor-parallel size)."""
    hd = attn.head_dim
    if attn.cross:
        return attn.kv.out_features // (2 * hd) if attn.fused else attn.k.out_features // hd
    if attn.fused:
        return attn.qkv.out_features // ((attn.rep + 2) * hd)
    return attn.k.out_features // hd


def check_tp(model: nn.Module, tp: int) -> None:
    """Refuse a tensor-parallel size that would split an attention head group."""
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            groups = _kv_groups(m)
            if groups % tp:
                raise ValueError(
                    f"tensor parallelism over {tp} ranks needs the key/value heads of '{name}' ({groups}) "
                    f"to divide by {tp}: choose kv_heads (or heads) divisible by mesh.tp"
                )


def retie_all(model: nn.Module) -> None:
    """Restore weight ties that distributing parameters broke (a tied head shares the embedding's
    distributed weight again; both are split over the vocabulary, so their layouts agree)."""
    for m in model.modules():
        if isinstance(m, MetaModel):
            m.retie()


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> dict[str, object]:
    """Parallelize every planned layer of `model` over `tp_mesh`; the plan that was applied."""
    check_tp(model, tp_mesh.size())
    plan = collect_tp_plan(model)
    if plan:
        parallelize_module(model, tp_mesh, plan)
    retie_all(model)
    return plan

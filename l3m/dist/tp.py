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

from l3m.model.blocks.layers import collect_tp_plan
from l3m.model.core import MetaModel


def check_tp(model: nn.Module, tp: int) -> None:
    """Refuse a tensor-parallel size that a module cannot be split over (its `tp_problem` trait, e.g. an
    attention whose key/value head groups would be cut)."""
    for name, m in model.named_modules():
        check = getattr(m, "tp_problem", None)
        problem = check(tp) if callable(check) else None
        if problem:
            raise ValueError(f"tensor parallelism over {tp} ranks cannot split '{name}' ({type(m).__name__}): "
                             f"it {problem}")


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

"""FSDP of expert-parallel experts over the ranks that hold the same experts (`ep_dp`).

Expert parallelism (`l3m.dist.ep`) splits the experts by expert over `ep` ranks; the `ep_dp =
dp_replicate x dp_shard x cp / ep` ranks left hold the same experts. Kept whole there, each rank would
store `num_experts / ep` experts; sharded over `ep_dp` with FSDP2 (as torchtitan does for MoE), each stores
`1 / ep_dp` of that, gathered for the forward and backward, and FSDP's reduce-scatter averages the
gradients over `ep_dp` (the `1 / ep` factor stays in `l3m.dist.ep`'s backward).

The experts live in their MoE block next to its router, which is an ordinary data-parallel parameter:
the router becomes an FSDP unit of its own on the data-parallel mesh first, then the block (its experts
only) one on the `ep_dp` mesh, and the enclosing layer's unit takes neither. With `ep_dp == 1` nothing is
done: the experts are already split as far as they go.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

from l3m.dist.mesh import ParallelDims
from l3m.traits import expert_parallel


def even_dim(shape: Sequence[int], ranks: int) -> int | None:
    """The dim FSDP shards a rank's experts along over `ranks`: by expert (0) when they split evenly, else
    the first dim that does (FSDP2 pads an uneven dim 0, so that a rank holding a single expert would give
    its peers nothing to hold); None: none does (FSDP's default, dim 0 padded)."""
    return next((dim for dim, size in enumerate(shape) if size % ranks == 0), None)


def _placement(p: nn.Parameter, ranks: int) -> Shard | None:
    dim = even_dim(p.to_local().shape if isinstance(p, DTensor) else p.shape, ranks)
    return None if dim is None else Shard(dim)


def shard_experts(model: nn.Module, dims: ParallelDims, policy: MixedPrecisionPolicy,
                  reshard_after_forward: bool = True) -> set[nn.Parameter]:
    """FSDP-shard over `ep_dp` the experts of every expert-parallel block (`apply_ep` first); the expert
    parameters now in FSDP's hands (empty when `ep_dp == 1`)."""
    from l3m.dist.fsdp import data_parallel_mesh

    if dims.ep == 1 or dims.size("ep_dp") == 1:
        return set()
    ep_dp = dims.submesh("ep_dp")
    dp_mesh, kind = data_parallel_mesh(dims)
    done: set[nn.Parameter] = set()
    for m in model.modules():
        names = expert_parallel(m)
        # a wrapper (activation checkpointing) shows its block's attributes but not its parameters
        if not names or getattr(m, "ep", None) is None or any(n not in m._parameters for n in names):
            continue
        experts = {id(m._parameters[n]) for n in names}
        for child in m.children():  # the router and any other part: ordinary data-parallel units
            if any(id(p) not in experts for p in child.parameters()):
                if kind not in ("shard", "hybrid") or dp_mesh is None:
                    raise ValueError(f"expert FSDP needs a sharded data-parallel mesh, not {kind!r}")
                fully_shard(child, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        other = [n for n, p in m._parameters.items() if p is not None and id(p) not in experts]
        if other:
            raise ValueError(f"{type(m).__name__} keeps parameters {other} beside its experts: "
                             "expert FSDP over ep_dp would shard them over the wrong ranks")
        fully_shard(m, mesh=ep_dp, mp_policy=policy, reshard_after_forward=reshard_after_forward,
                    shard_placement_fn=functools.partial(_placement, ranks=ep_dp.size()))
        done.update(m._parameters[n] for n in names)
    return done

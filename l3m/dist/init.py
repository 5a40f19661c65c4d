"""Sharded models initialise exactly like unsharded ones.

`init_weights()` run on a sharded (DTensor) parameter would draw each rank's shard from its own
generator: shards would not be slices of the tensor one process draws, and on a CPU mesh every
rank would even draw the same numbers for its different slice. So that a run is the same run on
any mesh, each module that owns sharded parameters is initialised on full-size temporaries (every
rank draws the same numbers, in the same order as one process would), and each rank keeps its
own slice. Only one module's full tensors exist at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

INIT_METHODS = ("init_weights", "reset_parameters")  # what l3m.model.init.init_model calls, in order


def _sharded_params(module: nn.Module) -> dict[str, DTensor]:
    return {n: p for n, p in module._parameters.items() if isinstance(p, DTensor)}


def _init_full(module: nn.Module, init: Callable[[], None]) -> None:
    """Run `init` with this module's sharded parameters swapped for full-size temporaries, then
    copy this rank's slice of each into the shard."""
    sharded = _sharded_params(module)
    if not sharded:
        init()
        return
    full: dict[str, nn.Parameter] = {}
    for name, p in sharded.items():
        full[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device),
                                  requires_grad=p.requires_grad)
        module._parameters[name] = full[name]
    try:
        init()
    finally:
        module._parameters.update(sharded)
    with torch.no_grad():
        for name, p in sharded.items():
            local = distribute_tensor(full[name].detach(), p.device_mesh, p.placements, src_data_rank=None)
            p.to_local().copy_(local.to_local())


def init_on_full_tensors(model: nn.Module) -> int:
    """Make `init_weights()` (or `reset_parameters()`) of every module that owns sharded
    parameters initialise full tensors and keep its slice; how many modules were adapted."""
    count = 0
    for m in model.modules():
        if not _sharded_params(m):
            continue
        for method in INIT_METHODS:
            fn = getattr(m, method, None)
            if callable(fn):
                setattr(m, method, functools.partial(_init_full, m, fn))
                count += 1
                break
    return count

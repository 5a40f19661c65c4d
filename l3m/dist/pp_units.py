"""The pipeline units of a built (meta) MetaModel: its blocks in schedule order, a Transformer
expanded into its layers so that a stage may start between two of them (l3m.pp_partition).

Costs are the FLOPs of one sample's step measured on the meta device (l3m.plan_pp, by module path),
or, when the program cannot say its batch's shapes, a proxy that needs no sample: the parameters a
token's forward multiplies by (every parameter except embedding tables, which are looked up). The
runtime and `l3m plan` measure alike, so they cut alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import nn

from l3m.model.core import MetaModel
from l3m.pp_partition import Unit, transformer_units


def _bytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _matmul_params(module: nn.Module, seen: set[int]) -> tuple[int, list[nn.Parameter]]:
    """(multiplied parameter count, every parameter) of `module`, each parameter once (`seen`)."""
    lookups = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    count, params = 0, []
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params.append(p)
        if id(p) not in lookups:
            count += p.numel()
    return count, params


def splittable(block: nn.Module) -> bool:
    """A block whose layers a stage may start between: the class that defines its `forward` declares
    `splits_between_layers` (its forward is `run_layers` over `layers`, then `finish`; a subclass that
    overrides `forward` without saying so is not split), it returns no hidden states, and its layers are
    several and not shared."""
    owner = next(c for c in type(block).__mro__ if "forward" in c.__dict__)
    layers = getattr(block, "layers", None)
    return (owner.__dict__.get("splits_between_layers", False) and getattr(block, "return_hidden", 0) == 0
            and isinstance(layers, nn.ModuleList) and len(layers) > 1
            and len({id(m) for m in layers}) == len(layers))


def port_keys(block: nn.Module, binding) -> dict[str, str]:
    """Input port name -> the key bound to it."""
    names = [n for n in inspect.signature(block.forward).parameters if n != "self"]
    return {**dict(zip(names, binding.args)), **dict(binding.kwargs)}


def model_units(model: MetaModel, flops: Mapping[str, float] | None = None) -> list[Unit]:
    """The model's units in schedule order, each with its cost and parameter bytes. The cost is the
    unit's measured FLOPs (`flops`: by module path, l3m.plan_pp) when given, else the FLOP proxy."""
    seen: set[int] = set()
    out: list[Unit] = []

    def cost(path: str, proxy: int) -> float:
        return float(flops.get(path, 0)) if flops else float(proxy)

    for path in model.schedule:
        binding = model._bindings[path]
        block = model.get_submodule(path)
        if not splittable(block):
            count, params = _matmul_params(block, seen)
            out.append(Unit(path, path, binding.read_keys, binding.write_keys, cost(path, count), _bytes(params)))
            continue
        ports = port_keys(block, binding)
        host = [ports[k] for k in ("mask", "context") if k in ports]
        costs, sizes = [], []
        for i, layer in enumerate(block.layers):
            count, params = _matmul_params(layer, seen)
            costs.append(cost(f"{path}.layers.{i}", count))
            sizes.append(_bytes(params))
        tail_count, tail = _matmul_params(block, seen)  # the final norm (and anything else beside the layers)
        costs[-1] += cost(f"{path}.norm", tail_count)
        has_aux = block.num_moe > 0 and len(binding.writes) > 1 and binding.writes[1] is not None
        out += transformer_units(path, len(block.layers), [ports["x"]], host, binding.write_keys, costs, sizes,
                                 has_aux, _bytes(tail))
    return out

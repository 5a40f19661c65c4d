"""The units that parallelism wraps: repeated layers and blocks.

The MetaModel's generated forward calls each block module (`<stage>.<name>`) directly, so the
block modules, and the layers inside them, are what hooks must sit on; the `Stage` containers
never run a forward of their own.
"""

from __future__ import annotations

from torch import nn

from l3m.model.core import MetaModel
from l3m.traits import fsdp_units, layer_lists


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(module path, block module)` of every block of every MetaModel in `model` (itself
    included), in declaration order; a module is the one now at the path (wrappers included)."""
    out: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()  # a module held at two paths is one unit, as in `named_modules`
    for prefix, m in model.named_modules():
        if isinstance(m, MetaModel):
            for path, rw in m.block_items():
                if id(rw.block) not in seen:
                    seen.add(id(rw.block))
                    out.append((f"{prefix}.{path}" if prefix else path, rw.block))
    return out


def repeated_layers(model: nn.Module) -> list[nn.ModuleList]:
    """The lists of repeated layers inside the blocks (each module's `layer_lists` trait, by default
    its `layers`): each entry is one repeated layer."""
    out: list[nn.ModuleList] = []
    for _, block in blocks(model):
        for owner in block.modules():
            for attr in layer_lists(owner):
                m = owner._modules.get(attr)
                if isinstance(m, nn.ModuleList) and not any(m is o for o in out):
                    out.append(m)
    return out


def declared_units(block: nn.Module, where: str) -> list[nn.Module]:
    """The sub-modules a block's `fsdp_units` trait names (dotted paths inside it)."""
    out = []
    for name in fsdp_units(block):
        try:
            out.append(block.get_submodule(name))
        except AttributeError:
            raise ValueError(f"block '{where}' ({type(block).__name__}) declares fsdp_units {name!r}, "
                             "which is not one of its sub-modules") from None
    return out


def shared_parameter_owners(model: nn.Module) -> set[int]:
    """`id()`s of the block modules that own a parameter also owned by another block (tied
    weights): such blocks cannot be sharded as separate units and are left to the root."""
    owners: dict[int, set[int]] = {}
    for _, block in blocks(model):
        for p in block.parameters():
            owners.setdefault(id(p), set()).add(id(block))
    shared: set[int] = set()
    for blocks_of_p in owners.values():
        if len(blocks_of_p) > 1:
            shared |= blocks_of_p
    return shared

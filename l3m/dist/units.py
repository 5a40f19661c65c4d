"""The units that parallelism wraps: repeated layers and blocks.

The MetaModel's generated forward calls each block module (`<stage>.<name>`) directly, so the
block modules, and the layers inside them, are what hooks must sit on; the `Stage` containers
never run a forward of their own.
"""

from __future__ import annotations

from torch import nn

from l3m.model.core import MetaModel

LAYER_LIST = "layers"  # the ModuleList name a block keeps its repeated layers under (Transformer)


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
    """The `layers` lists inside the blocks: each entry is one repeated layer."""
    out: list[nn.ModuleList] = []
    for _, block in blocks(model):
        for name, m in block.named_modules():
            if isinstance(m, nn.ModuleList) and name.rpartition(".")[2] == LAYER_LIST and m not in out:
                out.append(m)
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

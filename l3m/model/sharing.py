"""`share = "<block>"`: a block uses another block's parameters instead of its own.

Each parameter of the sharing block becomes the very Parameter of the target's (by the same
relative name), recorded as a tie on the MetaModel, so everything that already handles tied
weights handles it: `named_parameters()` and the optimizer see it once, `materialize` restores it
after `to_empty`, FSDP2 keeps both blocks in the root unit (one unit must own a shared tensor),
and checkpoints save it under both names and load it into the one tensor. Gradients from every
use accumulate in that tensor. Buffers (BatchNorm's running statistics) stay each block's own.
Lint checks the same things first (l3m.dsl.sharecheck: E790-E792).
"""

from __future__ import annotations

from l3m.dsl.ir import Node
from l3m.dsl.sharecheck import share_root
from l3m.model.blame import BlockFailure
from l3m.model.core import MetaModel


def _fail(node: Node, message: str) -> BlockFailure:
    return BlockFailure(node, ValueError(message), building=True)


def apply_shares(model: MetaModel, nodes: list[Node], kwargs: dict[str, dict], paths: dict[str, str]) -> int:
    """Tie the parameters of every block with a `share` argument to its target's; how many blocks share."""
    def share_of(n: Node) -> object:
        return kwargs.get(n.path, {}).get("share")

    count = 0
    for node in nodes:
        share = share_of(node)
        if not isinstance(share, str) or not share:
            continue
        target, why = share_root(node, nodes, share_of)
        if target is None:
            raise _fail(node, f"share={share!r}: {why}")
        src_path, dst_path = paths[target.path], paths[node.path]
        src, dst = model.get_submodule(src_path), model.get_submodule(dst_path)
        if type(src) is not type(dst):
            raise _fail(node, f"share={share!r}: a {type(dst).__name__} cannot share the parameters of a "
                              f"{type(src).__name__}")
        mine = [(n, p) for n, p in dst.named_parameters(remove_duplicate=False)]
        theirs = dict(src.named_parameters(remove_duplicate=False))
        if [n for n, _ in mine] != list(theirs):
            raise _fail(node, f"share={share!r}: the parameters differ ({', '.join(n for n, _ in mine)} vs "
                              f"{', '.join(theirs)})")
        for name, p in mine:
            if tuple(p.shape) != tuple(theirs[name].shape):
                raise _fail(node, f"share={share!r}: {name} is {tuple(p.shape)} here and "
                                  f"{tuple(theirs[name].shape)} in {target.name}")
        for name, _ in mine:
            model.tie(f"{dst_path}.{name}", f"{src_path}.{name}")
        count += 1
    return count


"""Weight sharing between blocks (`share = "conv1"`), checked at lint before anything is built.

A block whose constructor has a `share: str = ""` argument (Conv2d, BatchNorm, GroupNorm, ...) may
name another block, by name when unique or by path; the builder (l3m.model.sharing) then makes every
parameter of this block the very Parameter of the target's, so it is stored, counted and trained
once. A chain (`c` shares `b`, which shares `a`) resolves to its root `a`. Lint reports:

- E790: the target names no block, several, the block itself, or a chain that loops;
- E791: the target is another class (a Conv2d can only share a Conv2d's parameters);
- E792: the two blocks' parameters differ in names or shapes (from the static parameters).

Torch-free: it reads the resolved program and `l3m.dsl.shapes.params` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from l3m.dsl.diagnostics import Diagnostic, did_you_mean
from l3m.dsl.ir import Node, Program
from l3m.model.naming import tie_matches

SHARE_TARGET = "E790"
SHARE_CLASS = "E791"
SHARE_SHAPE = "E792"


def share_root(node: Node, blocks: Sequence[Node], share_of: Callable[[Node], Any]) -> tuple[Node | None, str]:
    """The block whose parameters `node` ends up using, following `share` chains; (None, why) when
    there is none (no block, several, itself, a loop)."""
    seen = [node]
    current = node
    while True:
        share = share_of(current)
        if not isinstance(share, str) or not share:
            return (current, "") if current is not node else (None, "shares nothing")
        hits = tie_matches(share, blocks)
        if not hits:
            return None, f"'{share}' names no block"
        if len(hits) > 1:
            return None, f"'{share}' names {len(hits)} blocks (name one by its path: " + \
                ", ".join(f"'{h.path}'" for h in hits) + ")"
        target = hits[0]
        if target is node:
            return None, "a block cannot share its own parameters" if current is node else \
                "the chain of `share` arguments leads back to this block"
        if target in seen:
            return None, "the chain of `share` arguments loops"
        seen.append(target)
        current = target


def _share(node: Node) -> Any:
    from l3m.dsl.paramcheck import block_args

    return block_args(node).get("share") if node.valid else None


def check_shares(program: Program) -> list[Diagnostic]:
    """Lint's checks of `share` arguments (E790, E791, E792)."""
    blocks = sorted(program.blocks, key=lambda n: n.index)
    diags: list[Diagnostic] = []
    for node in blocks:
        share = _share(node)
        if not isinstance(share, str) or not share:
            continue
        span = node.call.kwarg_spans.get("share", node.span)
        target, why = share_root(node, blocks, _share)
        if target is None:
            names = [n.name for n in blocks if n is not node] + [n.path for n in blocks if n is not node]
            help_ = did_you_mean(share, names) if "names no block" in why else None
            diags.append(Diagnostic(SHARE_TARGET, f"block '{node.name}' shares '{share}': {why}", span,
                                    help_ or "name another block of the same class, by name or by path"))
            continue
        note = [(f"'{target.name}' is declared here", target.span)]
        mine, theirs = node.call.type_name, target.call.type_name
        if mine != theirs:
            diags.append(Diagnostic(SHARE_CLASS, f"block '{node.name}' ({mine}) shares the parameters of "
                                    f"'{target.name}', a {theirs}", span,
                                    f"a block shares only the parameters of another {mine}", note))
            continue
        problem = _param_difference(node, target)
        if problem:
            diags.append(Diagnostic(SHARE_SHAPE, f"block '{node.name}' shares the parameters of '{target.name}', "
                                    f"but {problem}", span,
                                    "shared parameters need the same shapes: give both blocks the same arguments",
                                    note))
    return diags


def _param_difference(node: Node, target: Node) -> str:
    """How the two blocks' static parameters differ ("" when equal or not known)."""
    from l3m.dsl.paramcheck import node_params

    a, b = node_params(node), node_params(target)
    if a is None or b is None:
        return ""
    da, db = dict(a), dict(b)
    for name, shape in a:
        if name not in db:
            return f"'{target.name}' has no parameter '{name}'"
        if db[name] != shape:
            return f"its '{name}' is {_fmt(shape)}, the same parameter of '{target.name}' is {_fmt(db[name])}"
    missing = [n for n in db if n not in da]
    return f"'{node.name}' has no parameter '{missing[0]}'" if missing else ""


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def shared_copies(program: Program, params: Any) -> tuple[dict[str, str], dict[str, str]]:
    """For the graph's counts (a shared tensor counted once): the full name of each parameter of a
    block that shares -> its target's, and each sharing block's path -> the target's name. Only
    shares lint accepts (same class, same parameters) are listed."""
    from l3m.dsl.paramcheck import full_name

    blocks = sorted(program.blocks, key=lambda n: n.index)
    names: dict[str, str] = {}
    targets: dict[str, str] = {}
    for node in blocks:
        share = _share(node)
        if not isinstance(share, str) or not share:
            continue
        target, _ = share_root(node, blocks, _share)
        own = params.relative.get(node.path)
        if target is None or own is None or target.call.type_name != node.call.type_name \
                or own != params.relative.get(target.path):
            continue
        names.update({full_name(node, rel): full_name(target, rel) for rel, _ in own})
        targets[node.path] = target.name
    return names, targets

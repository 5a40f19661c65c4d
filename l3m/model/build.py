"""Program -> MetaModel: instantiate every block on the meta device and bind it to its keys.

Building on `meta` costs no memory, so any model file can be built to count parameters or
plan memory; `materialize` then allocates the tensors on a real device and initialises them
with the block library's `init_weights()` methods.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Call, Node, Program, Span
from l3m.model.blame import GLOB_CODE, BlockFailure, ProgramError, error_text, setting_span
from l3m.model.components import Factory
from l3m.model.core import MetaModel, ReadWriteBlock, bind_outputs, bind_ports
from l3m.model.naming import tie_matches
from l3m.model.sharing import apply_shares
from l3m.registry import Entry, load_builtins, lookup


def entry_for(call: Call, kinds: Sequence[str], where: str) -> Entry:
    """The registry entry a call names, which must be of one of `kinds` (the live class: building needs it)."""
    load_builtins()
    entry = lookup(call.type_name)
    if entry is None:
        raise ValueError(f"{where}: unknown name {call.type_name!r}")
    if entry.kind not in kinds:
        raise ValueError(f"{where}: {call.type_name!r} is a {entry.kind}, not a {' or '.join(kinds)}")
    return entry


def instantiate(call: Call, entry: Entry) -> Any:
    """Call the registered class with the file's arguments (positional ones folded into keywords)."""
    return entry.obj(**{k: components(v) for k, v in call.kwargs_for(entry.signature).items()})


class ComponentFailure(ValueError):
    """A component (`attn = Attention(pos = Rope2d())`) refused its arguments while its host built it."""

    def __init__(self, name: str, span: Span | None, error: BaseException) -> None:
        self.name, self.span, self.error = name, span, error
        super().__init__(f"component {name}{f' at {span}' if span is not None else ''}: {error_text(error)}")


class SpannedFactory(Factory):
    """A Factory that remembers where the file wrote its call, so a failure names the component."""

    def __init__(self, name: str, constructor: Any, kwargs: dict[str, Any], span: Span | None) -> None:
        super().__init__(name, constructor, kwargs)
        self.span = span

    def __call__(self, **context: Any) -> Any:
        try:
            return super().__call__(**context)
        except ComponentFailure:
            raise
        except Exception as e:  # the component's own constructor refused: the file's mistake, at its call
            raise ComponentFailure(self.name, self.span, e) from e


def components(value: Any) -> Any:
    """Component values (`ir.Call` as an argument value, nested, also inside lists) as Factories
    (`l3m.model.components.as_factory`'s, remembering their spans); other values unchanged."""
    if isinstance(value, list):
        return [components(v) for v in value]
    if not isinstance(value, Call):
        return value
    load_builtins()
    entry = lookup(value.type_name)
    if entry is None:
        raise ComponentFailure(value.type_name, value.type_span, ValueError(f"unknown component {value.type_name!r}"))
    kwargs = {k: components(v) for k, v in value.kwargs_for(entry.signature).items()}
    return SpannedFactory(value.type_name, entry.obj, kwargs, value.type_span)


def block_kwargs(node: Node, entry: Entry) -> dict[str, Any]:
    """The node's constructor arguments, with component values turned into Factories."""
    kwargs = node.call.kwargs_for(entry.signature)
    try:
        return {k: components(v) for k, v in kwargs.items()}
    except ComponentFailure as e:
        raise _failure(node, e) from e


def _failure(node: Node, error: BaseException) -> BlockFailure:
    """The block could not be built; a failing component is named with its own `file:line:col`."""
    notes = [(f"in component {error.name}", error.span)] if isinstance(error, ComponentFailure) else None
    return BlockFailure(node, error, building=True, notes=notes)


def bind_node(node: Node, module: nn.Module, entry: Entry) -> ReadWriteBlock:
    """Pair a built module with the node's resolved port bindings."""
    where = f"{node.span}: {node.path}"
    for b in [*node.reads, *node.writes]:
        if b.port is None:
            raise ValueError(f"{where}: key {b.key!r} is not bound to a port (run the resolver first)")
    args, kwargs = bind_ports(entry.inputs, [(b.port, b.key) for b in node.reads], where)
    writes = bind_outputs(entry.outputs, [(b.port, b.key) for b in node.writes], where)
    return ReadWriteBlock(module, args, kwargs, writes)


def module_path(node: Node) -> str:
    """Where a block node's module sits in the MetaModel: its path as `plan` prints it,
    `<model>.<stage>.<block>` (`vit.trunk.blocks`), so the prefix of its parameter names
    (the rule is `l3m.model.naming`)."""
    return node.path


def _ordered_blocks(program: Program, schedule: Sequence[str] | None) -> tuple[list[Node], list[Node]]:
    """Block nodes in declaration order and in schedule order (non-block paths are ignored)."""
    declared = sorted(program.blocks, key=lambda n: n.index)
    if schedule is None:
        return declared, declared
    by_path = {n.path: n for n in program.nodes}
    unknown = [p for p in schedule if p not in by_path]
    if unknown:
        raise ValueError(f"schedule names unknown nodes: {', '.join(unknown)}")
    return declared, [by_path[p] for p in schedule if by_path[p].role == "block"]


def _weight_name(block: nn.Module, where: str, embedding_ok: bool) -> str:
    """Name (inside `block`) of the block's `.weight` (attribute or property), else of its only
    nn.Embedding's weight when `embedding_ok`."""
    weight = getattr(block, "weight", None)
    if isinstance(weight, nn.Parameter):
        for name, p in block.named_parameters(remove_duplicate=False):
            if p is weight:
                return name
    if embedding_ok:
        embeddings = [n for n, m in block.named_modules() if isinstance(m, nn.Embedding)]
        if len(embeddings) == 1:
            return f"{embeddings[0]}.weight" if embeddings[0] else "weight"
    raise ValueError(f"{where}: {type(block).__name__} has no `.weight` parameter to tie")


def _apply_ties(model: MetaModel, nodes: list[Node], kwargs: dict[str, dict], paths: dict[str, str]) -> None:
    """`tie="<block>"`: the block shares that block's weight (a path, module path or unique name).

    The tying block's `tie_weight(weight)` is called when it has one (it may check or adapt);
    the builder records the tie so `materialize` can restore it after `to_empty`.
    """
    for node in nodes:
        tie = kwargs[node.path].get("tie")
        if not isinstance(tie, str) or not tie:
            continue
        where = f"{node.span}: {node.path}"
        matches = tie_matches(tie, nodes)
        if len(matches) != 1:
            raise BlockFailure(node, ValueError(f"tie={tie!r} names {'no block' if not matches else 'several blocks'}"),
                               building=True)
        if matches[0] is node:
            raise BlockFailure(node, ValueError("a block cannot tie to itself"), building=True)
        src_path, dst_path = paths[matches[0].path], paths[node.path]
        src_block, dst_block = model.get_submodule(src_path), model.get_submodule(dst_path)
        try:
            src_name = f"{src_path}.{_weight_name(src_block, where, embedding_ok=True)}"
            dst_name = f"{dst_path}.{_weight_name(dst_block, where, embedding_ok=False)}"
        except ValueError as e:
            raise BlockFailure(node, e, building=True) from e
        src, dst = model.get_parameter(src_name), model.get_parameter(dst_name)
        if dst.shape != src.shape:
            raise BlockFailure(node, ValueError(f"cannot tie a {tuple(dst.shape)} weight to {tie}'s "
                                                f"{tuple(src.shape)}"), building=True)
        if callable(getattr(dst_block, "tie_weight", None)):
            dst_block.tie_weight(src)
        model.tie(dst_name, src_name)


def freeze(model: nn.Module, globs: Sequence[str]) -> list[str]:
    """Set requires_grad=False on parameters whose name matches a glob; returns their names.

    A glob that matches nothing is an error: a misspelt freeze would otherwise train silently.
    """
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    frozen: list[str] = []
    for glob in globs:
        hit = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hit:
            raise ValueError(f"freeze pattern {glob!r} matches no parameter")
        for n in hit:
            model.get_parameter(n).requires_grad_(False)
            if n not in frozen:
                frozen.append(n)
    return frozen


def build_model(
    program: Program, *, device: str | torch.device = "meta", schedule: Sequence[str] | None = None
) -> MetaModel:
    """The program's MetaModel, its blocks built under `device` (meta: shapes only, no memory).

    `schedule` is the execution order (block node paths, e.g. from `l3m.dsl.schedule`); the
    default is declaration order. `train.freeze` globs are applied here, and a model with adapters
    (LoRA, Adapter) freezes the rest but `train.trainable` (l3m.model.adapters).
    """
    declared, ordered = _ordered_blocks(program, schedule)
    paths = {n.path: module_path(n) for n in declared}
    kwargs: dict[str, dict] = {}
    bound: list[tuple[str, ReadWriteBlock]] = []
    with torch.device(device):
        for node in declared:
            entry = entry_for(node.call, ("block",), f"{node.span}: {node.path}")
            kwargs[node.path] = block_kwargs(node, entry)
            try:
                module = entry.obj(**kwargs[node.path])
            except Exception as e:  # the block's own constructor refused its arguments: the file's mistake
                raise _failure(node, e) from e
            bound.append((paths[node.path], bind_node(node, module, entry)))
    model = MetaModel(bound, schedule=[paths[n.path] for n in ordered])
    _apply_ties(model, declared, kwargs, paths)
    apply_shares(model, declared, kwargs, paths)  # `share = "<block>"` (l3m.model.sharing)
    from l3m.model.adapters import freeze_base

    for setting, apply in (("freeze", freeze), ("trainable", freeze_base)):
        try:
            apply(model, program.section("train").get(setting) or [])
        except ValueError as e:
            example = next((n for n, _ in model.named_parameters()), "")
            raise ProgramError(Diagnostic(GLOB_CODE, f"train.{setting}: {e}", setting_span(program, "train", setting),
                                          f"patterns match full parameter names, such as '{example}'")) from e
    return model


def materialize(model: nn.Module, device: str | torch.device = "cpu", *, check: bool = True) -> nn.Module:
    """Allocate a meta-built model on `device` and initialise it (ties restored first).

    With `check`, every parameter and buffer is proven to be written by some `init_weights()`.
    """
    from l3m.model.init import check_initialised, init_model

    model.to_empty(device=device)
    for m in model.modules():
        if isinstance(m, MetaModel):
            m.retie()
    (check_initialised if check else init_model)(model)
    return model

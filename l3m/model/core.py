"""The runtime model: blocks bound to data_dict keys, and the MetaModel that runs them.

A block is an ordinary tensor-in/tensor-out `nn.Module`. A `Binding` names the keys it reads
(in port order) and writes, and `ReadWriteBlock` pairs the two (the seed's data_dict contract);
`MetaModel` holds the block modules themselves under `<submodel>.<stage>.<block>`, so that
parameter names follow the file, and runs them in the compiled schedule.

Because the schedule is fixed before any tensor exists, `MetaModel.forward` is generated as
straight-line Python source (one call per block, locals for every intermediate key), so
`torch.compile(model, fullgraph=True)` traces one graph with no breaks and no dictionary
juggling between blocks. The only text from the `.l3m` file that reaches the generated source
is key and module names, and only as `repr()` string literals or checked identifiers.
"""

from __future__ import annotations

import itertools
import keyword
import linecache
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from l3m.registry import Port

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_counter = itertools.count()


def bind_ports(
    ports: Sequence[Port], reads: Sequence[tuple[str, str]], where: str = "block"
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Turn `(port, key)` bindings into a call: keys passed by position, then by keyword.

    Ports are passed positionally while every port so far is bound (a variadic port takes all
    its keys, in binding order); after the first unbound optional port the rest go by keyword,
    so the block's own defaults apply to what is left out.
    """
    by_port: dict[str, list[str]] = {}
    for port, key in reads:
        by_port.setdefault(port, []).append(key)
    known = {p.name: p for p in ports}
    for port, keys in by_port.items():
        if port not in known:
            raise ValueError(f"{where} has no input port {port!r} (ports: {', '.join(known) or 'none'})")
        if len(keys) > 1 and not known[port].variadic:
            raise ValueError(f"{where} binds input port {port!r} more than once")
    args: list[str] = []
    kwargs: dict[str, str] = {}
    positional = True
    for p in ports:
        keys = by_port.get(p.name)
        if p.variadic:
            if keys and not positional:
                raise ValueError(f"{where}: variadic port {p.name!r} follows an unbound optional port")
            args.extend(keys or ())
            positional = False  # whatever follows `*xs` is keyword-only
        elif not keys:
            if not p.optional:
                raise ValueError(f"{where}: required input port {p.name!r} is not bound")
            positional = False
        elif positional:
            args.append(keys[0])
        else:
            kwargs[p.name] = keys[0]
    return tuple(args), kwargs


def bind_outputs(
    ports: Sequence[Port], writes: Sequence[tuple[str, str]], where: str = "block"
) -> tuple[str | None, ...]:
    """The key written for each output port, in `outputs` order; None drops an optional output."""
    out = {p.name: None for p in ports}
    for port, key in writes:
        if port not in out:
            raise ValueError(f"{where} has no output port {port!r} (ports: {', '.join(out) or 'none'})")
        if out[port] is not None:
            raise ValueError(f"{where} binds output port {port!r} more than once")
        out[port] = key
    for p in ports:
        if out[p.name] is None and not p.optional:
            raise ValueError(f"{where}: output port {p.name!r} is not bound to a key")
    keys = [k for k in out.values() if k is not None]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where} writes the same key from two output ports")
    return tuple(out.values())


@dataclass(frozen=True)
class Binding:
    """The data_dict keys one block reads (by position, then by port name) and writes.

    Only keys, never the module: the MetaModel and the Criterion keep a binding beside each block
    they hold, so the block sits in the module tree under its own name and may be replaced in
    place (activation checkpointing, `torch.compile`, FSDP) without the binding going stale.
    `writes` has one entry per declared output port (None: an unbound optional output, which the
    block computes but which is dropped).
    """

    args: tuple[str, ...]
    kwargs: Mapping[str, str]
    writes: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if not self.writes:
            raise ValueError("a block must declare at least one output port")

    @property
    def read_keys(self) -> tuple[str, ...]:
        return self.args + tuple(self.kwargs.values())

    @property
    def write_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.writes if k is not None)

    def call(self, block: nn.Module, d: Mapping[str, Any]) -> tuple[Any, ...]:
        """Run `block` on the bound keys of `d`; every declared output, in port order."""
        out = block(*[d[k] for k in self.args], **{p: d[k] for p, k in self.kwargs.items()})
        if len(self.writes) == 1:
            return (out,)
        if not isinstance(out, (tuple, list)) or len(out) != len(self.writes):
            got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
            raise TypeError(f"{type(block).__name__} must return {len(self.writes)} outputs, got {got}")
        return tuple(out)

    def __str__(self) -> str:
        reads = [*self.args, *(f"{p}={k}" for p, k in self.kwargs.items())]
        writes = [k if k is not None else "_" for k in self.writes]
        return f"{', '.join(reads)} -> {', '.join(writes)}"


class ReadWriteBlock:
    """One block bound to its data_dict keys: reads only `args`/`kwargs`, writes only `writes`.

    The seed's contract, `rw(d)`: the block runs on its keys and a new dict comes back with its
    outputs written. A ReadWriteBlock is not an `nn.Module` and is never part of a model's
    module tree: it only pairs a block with its `Binding`, so parameter names follow the file
    (`vit.trunk.blocks.layers.3.attn.qkv.weight`, no wrapper segment). The block returns one tensor
    for one output port, otherwise a tuple in `outputs` order.
    """

    def __init__(
        self,
        block: nn.Module,
        args: Sequence[str],
        kwargs: Mapping[str, str] | None = None,
        writes: Sequence[str | None] = ("x",),
    ):
        self.block = block
        self.binding = Binding(tuple(args), dict(kwargs or {}), tuple(writes))

    @classmethod
    def of(cls, block: nn.Module, binding: Binding) -> ReadWriteBlock:
        """`block` under an existing binding."""
        return cls(block, binding.args, binding.kwargs, binding.writes)

    @property
    def args(self) -> tuple[str, ...]:
        return self.binding.args

    @property
    def kwargs(self) -> Mapping[str, str]:
        return self.binding.kwargs

    @property
    def writes(self) -> tuple[str | None, ...]:
        return self.binding.writes

    @property
    def read_keys(self) -> tuple[str, ...]:
        return self.binding.read_keys

    @property
    def write_keys(self) -> tuple[str, ...]:
        return self.binding.write_keys

    def call(self, d: Mapping[str, Any]) -> tuple[Any, ...]:
        """Run the block on its bound keys; every declared output, in port order."""
        return self.binding.call(self.block, d)

    def __call__(self, d: Mapping[str, Any]) -> dict[str, Any]:
        new = dict(d)
        for key, value in zip(self.writes, self.call(d)):
            if key is not None:
                new[key] = value
        return new

    def __repr__(self) -> str:
        return f"ReadWriteBlock({type(self.block).__name__}: {self.binding})"


class Stage(nn.Module):
    """A named group of blocks (`trunk`) or of stages (a sub-model such as `image`).

    A container only: it names parameters and is the unit of freezing and checkpointing;
    the MetaModel's generated forward calls the blocks inside it directly.
    """


def _attr(expr: str, name: str) -> str:
    """`expr.name` when `name` is a plain identifier, otherwise a getattr with a string literal."""
    if _IDENT.match(name) and not keyword.iskeyword(name):
        return f"{expr}.{name}"
    return f"getattr({expr}, {name!r})"


def _local(key: str, step: int) -> str:
    """A Python local for the version of `key` written at `step` (never a keyword: it ends in a digit)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", key.encode("ascii", "replace").decode())
    if not base or base[0].isdigit():
        base = "k" + base
    return f"{base}_{step}"


class MetaModel(nn.Module):
    """The model of one `.l3m` file: blocks under their stages, run in schedule order.

    Parameter names follow the file: a block sits at the path `plan` prints for it (one name per
    thing, `l3m.model.naming`), so block `blocks` in stage `trunk` of model `vit` is the module
    `vit.trunk.blocks` and owns `vit.trunk.blocks.<...>` (`vit.trunk.blocks.layers.3.attn.qkv.weight`);
    in a nested model `image` of `clip` it is `clip.image.trunk.blocks.<...>`. The models and stages
    are `Stage` containers; they hold the user's block modules
    themselves; each block's `Binding` (its keys) is kept beside the module tree, not in it.

    `blocks` gives `(path, ReadWriteBlock)` in declaration order (which fixes parameter order);
    `schedule` gives the same paths in execution order (default: declaration order). The
    generated forward looks each block up by attribute at call time, so a block may later be
    replaced in place (activation checkpointing, `torch.compile`, FSDP wrapping).
    """

    def __init__(self, blocks: Sequence[tuple[str, ReadWriteBlock]], schedule: Sequence[str] | None = None):
        super().__init__()
        self._bindings: dict[str, Binding] = {}  # block path -> its keys, in declaration order
        self._schedule: list[str] = []
        self._ties: list[tuple[str, str]] = []  # (tied parameter name, parameter it shares)
        self._side: dict[str, dict[str, str]] = {}  # block path -> {port: key} read beside its binding
        for path, rw in blocks:
            self._add(path, rw)
        paths = list(self._bindings)
        self._schedule = list(schedule) if schedule is not None else paths
        if sorted(self._schedule) != sorted(paths):
            missing = sorted(set(paths) - set(self._schedule))
            extra = sorted(set(self._schedule) - set(paths))
            dup = sorted({p for p in self._schedule if self._schedule.count(p) > 1})
            raise ValueError(
                f"schedule must name every block once (missing: {missing}, unknown: {extra}, repeated: {dup})"
            )
        self._compile_forward()

    def _add(self, path: str, rw: ReadWriteBlock) -> None:
        parts = path.split(".")
        if not all(parts):
            raise ValueError(f"bad block path {path!r}")
        if path in self._bindings:
            raise ValueError(f"two blocks at {path!r}")
        parent: nn.Module = self
        for i, part in enumerate(parts):
            leaf = i == len(parts) - 1
            child = parent._modules.get(part)
            if child is None:
                # A class attribute (`train`, `to`, `code`, ...) would shadow the module.
                if hasattr(type(parent), part) or part in parent.__dict__:
                    where = ".".join(parts[: i + 1])
                    raise ValueError(
                        f"cannot name a module {where!r}: {part!r} is reserved (an attribute of {type(parent).__name__})"
                    )
                child = rw.block if leaf else Stage()
                parent.add_module(part, child)
            elif leaf or not isinstance(child, Stage):
                raise ValueError(f"block path {path!r} collides with {'.'.join(parts[: i + 1])!r}")
            parent = child
        self._bindings[path] = rw.binding

    # -- the generated forward -------------------------------------------------------------

    def _generate(self) -> str:
        lines = ["def forward(self, d):", "    d = dict(d)"]
        latest: dict[str, str] = {}  # key -> the local holding its latest version
        used: set[str] = set()

        def read(key: str) -> str:
            return latest.get(key) or f"d[{key!r}]"

        for step, path in enumerate(self._schedule, start=1):
            rw = self._bindings[path]
            expr = "self"
            for part in path.split("."):
                expr = _attr(expr, part)
            call_args = [read(k) for k in rw.args]
            for port, key in rw.kwargs.items():
                if not (_IDENT.match(port) and not keyword.iskeyword(port)):
                    raise ValueError(f"{path}: port name {port!r} is not an identifier")
                call_args.append(f"{port}={read(key)}")
            for port, key in getattr(self, "_side", {}).get(path, {}).items():
                call_args.append(f"{port}={latest.get(key) or f'd.get({key!r})'}")  # port: checked in add_side_input
            targets = []
            for k in rw.writes:
                name = _local(k, step) if k is not None else "_"
                while name != "_" and name in used:  # two keys that sanitise alike ("a-b", "a.b")
                    name += "_"
                used.add(name)
                targets.append(name)
            lhs = targets[0] if len(targets) == 1 else ", ".join(targets)
            lines.append(f"    {lhs} = {expr}({', '.join(call_args)})")
            for key, local in zip(rw.writes, targets):
                if key is not None:
                    latest[key] = local
        for key, local in latest.items():
            lines.append(f"    d[{key!r}] = {local}")
        lines.append("    return d")
        return "\n".join(lines) + "\n"

    def _compile_forward(self) -> None:
        src = self._generate()
        filename = f"<l3m MetaModel {next(_counter)}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # readable tracebacks
        # The source holds only literals and checked identifiers, so the ordinary builtins are safe
        # (and dynamo needs them: its resume functions look builtins up in the frame's globals).
        namespace: dict[str, Any] = {}
        exec(compile(src, filename, "exec"), namespace)  # safe: keys are repr()s, ports/locals/attrs checked identifiers
        self._source = src
        self._generated_forward = namespace["forward"]

    def forward(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """The data_dict with every key the model writes (latest version of each) added."""
        return self._generated_forward(self, d)

    def forward_eager(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """The same computation through each ReadWriteBlock's dict contract, for debugging."""
        for path in self._schedule:
            d = ReadWriteBlock.of(self.get_submodule(path), self._bindings[path])(d)
        return dict(d)

    def add_side_input(self, path: str, port: str, key: str) -> None:
        """Also pass `key` to block `path` as keyword `port`, outside its binding: a whole-program
        fusion's extra input (l3m.model.fusion), which `input_keys` and `block_items` leave out."""
        if path not in self._bindings:
            raise ValueError(f"no block at {path!r}")
        if not (_IDENT.match(port) and not keyword.iskeyword(port)):
            raise ValueError(f"{path}: port name {port!r} is not an identifier")
        self._side.setdefault(path, {})[port] = key
        self._compile_forward()

    @property
    def code(self) -> str:
        """The generated source of `forward`."""
        return self._source

    def extra_repr(self) -> str:
        """The keys each block reads and writes, in schedule order (the modules print below)."""
        return "\n".join(f"{path}: {self._bindings[path]}" for path in self._schedule)

    # -- what the model is made of ---------------------------------------------------------

    @property
    def schedule(self) -> list[str]:
        return list(self._schedule)

    def block_items(self) -> list[tuple[str, ReadWriteBlock]]:
        """`(path, ReadWriteBlock)` in declaration order, each holding the block module now at
        `path` (the wrapped one, once parallelism has wrapped it)."""
        return [(p, ReadWriteBlock.of(self.get_submodule(p), b)) for p, b in self._bindings.items()]

    @property
    def input_keys(self) -> list[str]:
        """Keys the model reads that none of its blocks wrote before (in first-read order)."""
        written: set[str] = set()
        out: list[str] = []
        for path in self._schedule:
            rw = self._bindings[path]
            out += [k for k in rw.read_keys if k not in written and k not in out]
            written.update(rw.write_keys)
        return out

    @property
    def output_keys(self) -> list[str]:
        """Every key some block writes (in first-write order)."""
        out: list[str] = []
        for path in self._schedule:
            out += [k for k in self._bindings[path].write_keys if k not in out]
        return out

    # -- weight tying ----------------------------------------------------------------------

    def tie(self, name: str, target: str) -> None:
        """Make parameter `name` the very same Parameter as `target` (and remember it)."""
        owner, _, leaf = name.rpartition(".")
        param = self.get_parameter(target)
        setattr(self.get_submodule(owner) if owner else self, leaf, param)
        if (name, target) not in self._ties:
            self._ties.append((name, target))

    def retie(self) -> None:
        """Restore ties that a conversion broke (`to_empty` gives each module its own tensor).

        Ties still intact (conversions that swap tensors in place, as under FSDP2) are left
        alone, so no parameter a wrapper already tracks is replaced.
        """
        for name, target in self._ties:
            if self.get_parameter(name) is not self.get_parameter(target):
                self.tie(name, target)

    @property
    def ties(self) -> list[tuple[str, str]]:
        return list(self._ties)

    # -- copies and pickles regenerate the forward rather than carrying a code object ------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_generated_forward", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._compile_forward()


def params_by_block(model: MetaModel) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Each block path's parameters (full names); a shared parameter counts for its first owner."""
    declared = [p for p, _ in model.block_items()]
    paths = sorted(declared, key=len, reverse=True)
    out: dict[str, list[tuple[str, nn.Parameter]]] = {p: [] for p in declared}
    for name, param in model.named_parameters():
        owner = next(p for p in paths if name.startswith(p + "."))
        out[owner].append((name, param))
    return out

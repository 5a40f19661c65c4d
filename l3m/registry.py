"""The registry: the only names a `.l3m` file can instantiate.

Every entry carries metadata that the checker reads without building anything:
its kind, its input ports (from the signature of `forward` / `__call__`), its output
ports (the class attribute `outputs`) and its constructor signature.

A project adds its own entries with a decorator in a module that the `.l3m` file names
explicitly (`extension "mypkg.blocks"`), e.g.::

    from l3m import register

    @register("block")
    class Scale(nn.Module):
        outputs = ("x",)
        def __init__(self, factor: float = 2.0): ...
        def forward(self, x): return x * self.factor

Optimizers and schedules are factory functions whose leading parameters are supplied by
the trainer, not by the file: an optimizer's first (`named_params`), a schedule's first two
(`optimizer`, `total_steps`). `RUNTIME_PARAMS` says how many; the checker skips them.

Until `load_builtins()` is called (by the paths that build, plan or train), `lookup`, `names` and
`entries` answer for the built-in names from the checked-in manifest (`l3m.registry_static`), so
checking a file imports no torch; entries registered by extension modules are served live.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# "component": a part that only ever stands as another block's argument (`pos = Rope2d()`), never as a
# node; blocks that implement an interface (`l3m.interfaces`) are usable as components too.
KINDS = ("block", "source", "generator", "loss", "metric", "optimizer", "schedule", "component")
# What a kind is called in messages ("a data source", "an optimizer").
KIND_PHRASE = {
    "block": "a block",
    "source": "a data source",
    "generator": "a data generator",
    "loss": "a loss",
    "metric": "a metric",
    "optimizer": "an optimizer",
    "schedule": "a schedule",
    "component": "a component",
}
# How many leading parameters of a kind's factory the trainer supplies (never written in a file).
RUNTIME_PARAMS = {"optimizer": 1, "schedule": 2}
# The method whose parameters are a kind's input ports.
_PORT_METHOD = {"block": "forward", "loss": "forward", "metric": "forward", "generator": "__call__"}

# Modules that define the built-in entries; imported on first use of the registry.
BUILTIN_MODULES = (
    "l3m.model.blocks",
    "l3m.model.losses",
    "l3m.model.metrics",
    "l3m.data.sources",
    "l3m.data.generators",
    "l3m.train.optim",
    "l3m.train.schedules",
)


@dataclass(frozen=True)
class Port:
    name: str
    optional: bool = False
    variadic: bool = False  # `*xs`: any number of keys (e.g. concatenation)


def ports_from_params(params: list[inspect.Parameter]) -> tuple[Port, ...]:
    """Input ports of a `forward`/`__call__` (without `self`): shared by imported and statically read entries."""
    ports = []
    for p in params:
        if p.name == "rng" and p.kind is p.KEYWORD_ONLY:  # a generator's random source, not a port
            continue
        if p.kind is p.VAR_POSITIONAL:
            ports.append(Port(p.name, optional=True, variadic=True))
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            ports.append(Port(p.name, optional=p.default is not p.empty))
    return tuple(ports)


@dataclass
class Entry:
    """A registered name and what the checker may know about it without calling it."""

    kind: str
    name: str
    obj: Any  # the class (or factory function)
    outputs_spec: tuple[str, ...] = ()
    module: str = ""
    doc: str = ""
    extra: dict = field(default_factory=dict)

    @cached_property
    def signature(self) -> inspect.Signature:
        target = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        sig = inspect.signature(target)
        params = [p for p in sig.parameters.values()]
        if inspect.isclass(self.obj) and params and params[0].name == "self":
            params = params[1:]
        return sig.replace(parameters=params)

    @cached_property
    def type_hints(self) -> dict[str, Any]:
        import typing

        target = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        try:
            return typing.get_type_hints(target)
        except Exception:  # unresolvable annotations: check nothing rather than crash
            return {}

    @cached_property
    def interfaces(self) -> tuple[str, ...]:
        """The interfaces (`l3m.interfaces`) the class implements: where it may stand as a component."""
        from l3m.interfaces import interfaces_of

        return interfaces_of(self.obj)

    @cached_property
    def inputs(self) -> tuple[Port, ...]:
        method = _PORT_METHOD.get(self.kind)
        if method is None:
            return ()
        fn = getattr(self.obj, method, None)
        if fn is None:
            return ()
        return ports_from_params(list(inspect.signature(fn).parameters.values())[1:])

    @cached_property
    def outputs(self) -> tuple[Port, ...]:
        return outputs_from_spec(self.outputs_spec)

    @property
    def outputs_attr(self) -> tuple[str, ...] | None:
        """The class's own `outputs` attribute (None when it has none), before kind defaults."""
        return tuple(self.obj.outputs or ()) if hasattr(self.obj, "outputs") else None

    @property
    def shapes(self) -> str | None:
        """The class's shape rule (`"x: [B, N, dim] -> x: [B, N, dim]"`), None when it declares none."""
        value = getattr(self.obj, "shapes", None)
        return value if isinstance(value, str) else None

    @property
    def checks(self) -> tuple[tuple[str, str], ...]:
        """The class's argument rules: (boolean expression over constructor arguments, message)."""
        return tuple((str(e), str(m)) for e, m in (getattr(self.obj, "checks", None) or ()))

    def trait(self, name: str) -> Any:
        """A plain class attribute the checker reads (`token_policy`); None when the class has none."""
        value = getattr(self.obj, name, None)
        return None if callable(value) else value

    def hook(self, name: str) -> Any:
        """A static method the checker calls (`port_problem`); None when the class has none."""
        return getattr(self.obj, name, None)


def outputs_from_spec(spec: tuple[str, ...]) -> tuple[Port, ...]:
    # "*": any keys, each bound to a port of its own name (a Mixture writes what its parts write)
    return tuple(Port("*", optional=True, variadic=True) if n == "*" else Port(n.rstrip("?"), optional=n.endswith("?"))
                 for n in spec)


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_loaded = False
_loading = False
_version = 0  # bumped by every registration: the manifest view is rebuilt
_view: tuple[Any, dict[str, dict[str, Any]]] | None = None


def register(kind: str, name: str | None = None, *, shapes: str | None = None,
             checks: Sequence[tuple[str, str]] | None = None, **extra: Any) -> Callable[[Any], Any]:
    """Register a class or factory under `name` (default: its own name) as `kind`.

    `shapes` / `checks` (the shape rule and argument rules, see `l3m.dsl.shapes`) and the keywords
    named in `l3m.traits.TRAITS` (`tp_plan`, `context_parallel`, ...) are set as class attributes of
    the same names, as if the class body declared them; other keywords are kept in `Entry.extra`."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {', '.join(KINDS)}")
    from l3m import traits

    declared = {k: v for k, v in (("shapes", shapes), ("checks", checks)) if v is not None}
    declared.update({k: extra.pop(k) for k in list(extra) if k in traits.TRAITS})

    def wrap(obj: Any) -> Any:
        key = name or obj.__name__
        who = f"@register({kind!r}) of {getattr(obj, '__qualname__', key)} ({getattr(obj, '__module__', '?')})"
        for k in extra:
            meant = traits.misspelt_trait(k)
            if meant:
                raise TypeError(f"{who}: unknown keyword {k!r}; did you mean {meant!r}?")
        traits.declare(obj, who, declared)
        outputs = tuple(getattr(obj, "outputs", ()) or ())
        if kind in ("loss", "metric") and not outputs:
            outputs = ("out",)
        global _version
        _REGISTRY[kind][key] = Entry(
            kind=kind,
            name=key,
            obj=obj,
            outputs_spec=outputs,
            module=getattr(obj, "__module__", ""),
            doc=inspect.getdoc(obj) or "",
            extra=extra,
        )
        _version += 1
        return obj

    return wrap


def load_builtins() -> None:
    """Import every built-in entry's module (torch): from now on the registry answers live."""
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        _loaded = True
    finally:
        _loading = False


def load_extension(module: str) -> None:
    """Import a user's module of registered entries (named explicitly in the file or on the CLI)."""
    importlib.import_module(module)


def _tables() -> dict[str, dict[str, Any]]:
    """Kind -> name -> entry: live once `load_builtins()` ran; before, the manifest's built-in
    entries, with what extension modules registered (live) on top."""
    global _view
    if _loaded:
        return _REGISTRY
    state = (_version, *map(len, _REGISTRY.values()))  # an entry popped from `_REGISTRY` counts too
    if _view is None or _view[0] != state:
        from l3m.registry_static import builtin_modules, manifest_entries

        try:
            listed = manifest_entries()
        except (OSError, ValueError, KeyError, RuntimeError):  # no usable manifest: slow but right
            load_builtins()
            return _REGISTRY
        tables: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        for e in listed:
            tables[e.kind][e.name] = e
        builtin = builtin_modules()
        for kind, table in _REGISTRY.items():
            for name, e in table.items():
                if e.module not in builtin:  # an extension's entry (a built-in imported early stays manifest)
                    tables[kind][name] = e
        _view = (state, tables)
    return _view[1]


def lookup(name: str) -> Entry | Any | None:
    """The entry called `name`, whatever its kind (names are unique across kinds)."""
    for table in _tables().values():
        if name in table:
            return table[name]
    return None


def names(kind: str | None = None) -> list[str]:
    tables = _tables()
    if kind is None:
        return [n for t in tables.values() for n in t]
    return list(tables[kind])


def entries(kind: str | None = None) -> list[Entry | Any]:
    tables = _tables()
    if kind is None:
        return [e for t in tables.values() for e in t.values()]
    return list(tables[kind].values())

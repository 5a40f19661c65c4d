"""Components as their host receives them: a registered constructor plus the arguments the file gave.

The builder turns every component value of the resolved program (an `ir.Call` standing as an argument
value, nested to any depth) into a `Factory`. The host calls it with its context; the file's arguments win
over the context, and context entries the constructor does not take are dropped, so a host may offer more
than one kind of component needs (`attn(dim=..., heads=..., depth=..., init=...)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from l3m.interfaces import Use


class Factory:
    """`name(**kwargs)` waiting for its host's context."""

    def __init__(self, name: str, constructor: Callable[..., Any], kwargs: dict[str, Any] | None = None):
        self.name, self.constructor, self.kwargs = name, constructor, dict(kwargs or {})

    def get(self, key: str, default: Any = None) -> Any:
        """An argument the file gave, else `default` (hosts read e.g. a component's `hidden`)."""
        return self.kwargs.get(key, default)

    def __call__(self, **context: Any) -> Any:
        params = inspect.signature(self.constructor).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        merged = {k: v for k, v in context.items() if takes_all or k in params}
        merged.update(self.kwargs)
        return self.constructor(**merged)

    def __repr__(self) -> str:
        args = ", ".join(f"{k} = {v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


def as_factory(value: Any) -> Any:
    """A component value (`Factory`, `Use`, or an `ir.Call`) as a `Factory`; anything else unchanged.
    Nested component arguments become factories too."""
    from l3m import registry
    from l3m.dsl.ir import Call

    if isinstance(value, Factory):
        return value
    if isinstance(value, Use):
        name, kwargs = value.name, dict(value.kwargs)
    elif isinstance(value, Call):
        name, kwargs = value.type_name, dict(value.kwargs)
    else:
        return value
    registry.load_builtins()
    entry = registry.lookup(name)
    if entry is None:
        raise ValueError(f"unknown component {name!r}")
    return Factory(name, entry.obj, {k: as_factory(v) for k, v in kwargs.items()})

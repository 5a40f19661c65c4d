"""What the checkers read from a constructor's signature, computed once per signature.

Every check pass walks every block, and each used to list the signature's parameters and their
defaults again for each block (a 1,000-line file paid for that thousands of times per edit).
Signatures are immutable and live as long as their registry entry, so the answers are cached by
the signature object itself (identity, not equality: a default may be unhashable).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

_NAMED = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
          inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

# id(signature) -> (signature, named parameter names, positional names, defaults); the signature is
# kept so that its id cannot be reused by another object while the entry is cached.
_Info = tuple[inspect.Signature, tuple[str, ...], tuple[str, ...], dict[str, Any]]
_CACHE: dict[int, _Info] = {}
_MAX = 4096


def _info(sig: inspect.Signature) -> _Info:
    hit = _CACHE.get(id(sig))
    if hit is not None and hit[0] is sig:
        return hit
    params = tuple(sig.parameters.values())
    named = tuple(p.name for p in params if p.kind in _NAMED)
    positional = tuple(p.name for p in params if p.kind in _POSITIONAL)
    defaults = {p.name: p.default for p in params if p.default is not p.empty}
    if len(_CACHE) >= _MAX:
        _CACHE.clear()
    info = _CACHE[id(sig)] = (sig, named, positional, defaults)
    return info


def named_names(sig: inspect.Signature) -> tuple[str, ...]:
    """The names of the parameters an argument can bind by position or name (no `*args`/`**kwargs`), in order."""
    return _info(sig)[1]


def positional_names(sig: inspect.Signature) -> tuple[str, ...]:
    """The names of the parameters a positional argument can bind, in order."""
    return _info(sig)[2]


def defaults(sig: inspect.Signature) -> dict[str, Any]:
    """Parameter name -> default, for every parameter that has one (a fresh dict: callers fill it in)."""
    return dict(_info(sig)[3])


class ComponentArgs(dict):
    """A component value (`attn = Attention(pos = Rope2d())`) as the checkers' argument tables hold it:
    a dict of the component's arguments after its signature defaults (nested components likewise),
    with `.name` the registered name. Shape rules (`l3m.dsl.shapes.rules`) and static parameter rules
    (`l3m.dsl.shapes.params`) read e.g. `args["attn"].name` and `args["attn"]["pos"]`."""

    name: str = ""
    written: frozenset[str] = frozenset()  # the arguments the call wrote (the rest are signature defaults)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


def component_args(value: Any) -> Any:
    """An `ir.Call` component value (or a list of them) as `ComponentArgs`; anything else unchanged."""
    from l3m.dsl.ir import Call

    if isinstance(value, list):
        return [component_args(v) for v in value]
    if not isinstance(value, Call):
        return value
    from l3m import registry

    out = ComponentArgs()
    out.name = value.type_name
    entry = registry.lookup(value.type_name)
    if entry is not None:
        with contextlib.suppress(TypeError, ValueError):
            out.update({k: component_args(v) for k, v in defaults(entry.signature).items()})
    out.update({k: component_args(v) for k, v in value.kwargs.items()})
    out.written = frozenset(value.kwargs)
    return out

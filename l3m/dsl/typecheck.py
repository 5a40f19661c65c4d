"""Hold an evaluated `.l3m` value against a Python annotation (constructor or settings field)."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal

from l3m.interfaces import Interface


class Symbol(str):
    """A bare name that is not a `let`: valid where a string or a Literal is expected (`dtype = bf16`)."""


def is_interface(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, Interface) and ann is not Interface


def interfaces_in(ann: Any) -> list[type[Interface]]:
    """The interfaces an annotation accepts (`AttentionLayer | None` -> [AttentionLayer]), through
    unions and list element types."""
    if is_interface(ann):
        return [ann]
    out: list[type[Interface]] = []
    for a in typing.get_args(ann):
        out += [i for i in interfaces_in(a) if i not in out]
    return out


def describe(value: Any) -> str:
    if getattr(value, "is_component", False):
        return f"the component '{getattr(value, 'type_name', None) or getattr(value, 'name', '?')}(...)'"
    if isinstance(value, Symbol):
        return f"the undefined name '{value}'"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if is_interface(ann):
        return f"{'an' if ann.__name__[0] in 'AEIOU' else 'a'} {ann.__name__} component"
    if ann is type(None) or ann is None:
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(ann))
    if origin in (list, tuple, typing.Sequence, typing.MutableSequence):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        inner = type_name(args[0]) if args else "values"
        return f"a list of {inner}"
    return {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}.get(ann, getattr(ann, "__name__", str(ann)))


def mismatch(value: Any, ann: Any) -> str | None:
    """None when `value` fits `ann`; otherwise what was expected, in words."""
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return None
    origin = typing.get_origin(ann)
    ok: bool
    if is_interface(ann):
        ok = getattr(value, "is_component", False)
    elif getattr(value, "is_component", False) and not interfaces_in(ann):
        ok = False  # a component where the parameter takes none
    elif ann is type(None) or ann is None:
        ok = value is None
    elif origin is Literal:
        ok = any(_same_literal(value, a) for a in typing.get_args(ann))
    elif origin in (typing.Union, types.UnionType):
        ok = any(mismatch(value, a) is None for a in typing.get_args(ann))
    elif origin in (list, tuple, typing.Sequence, typing.MutableSequence) or ann in (list, tuple):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(ann):
            ok = isinstance(value, list) and len(value) == len(args) and all(
                mismatch(v, a) is None for v, a in zip(value, args))
        else:
            ok = isinstance(value, list) and all(mismatch(v, args[0]) is None for v in value) if args else isinstance(value, list)
    elif ann is bool:
        ok = isinstance(value, bool)
    elif ann is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ann is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ann is str:
        ok = isinstance(value, str)
    elif origin is dict or ann is dict:
        ok = isinstance(value, dict)
    else:
        return None  # an annotation the checker does not model: trust the constructor
    return None if ok else type_name(ann)


def _same_literal(value: Any, option: Any) -> bool:
    if isinstance(option, str):
        return isinstance(value, str) and value == option
    return type(value) is type(option) and value == option

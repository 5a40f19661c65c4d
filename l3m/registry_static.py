"""The built-in registry without importing it: entries read from the checked-in manifest.

`l3m lint` and `l3m graph` need every built-in block's signature, argument types, ports, outputs
and shape rules, but importing the classes imports torch (seconds). `l3m/registry_manifest.json`
records that metadata (`python -m l3m.registry_manifest --write` regenerates it from the live
classes; a test fails when it is stale) and `ManifestEntry` serves it with `registry.Entry`'s
interface. Everything here is torch-free and evaluates nothing but data: annotations are re-read
by a small AST evaluator over a typing-only namespace.
"""

from __future__ import annotations

import ast
import collections.abc
import functools
import importlib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from l3m.interfaces import INTERFACES, Use, use

MANIFEST_PATH = Path(__file__).with_name("registry_manifest.json")
FORMAT = 1

# Class attributes of plain data that checkers read (`token_policy`), and static methods the checker
# calls (`port_problem(port, args)`, `manifest_tokenizer(root)`): recorded as "module:function" of a
# torch-free module, imported when first called.
TRAITS = ("token_policy",)
HOOKS = ("port_problem", "manifest_tokenizer")

_KIND_NAMES = {
    "POSITIONAL_ONLY": inspect.Parameter.POSITIONAL_ONLY,
    "POSITIONAL_OR_KEYWORD": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "VAR_POSITIONAL": inspect.Parameter.VAR_POSITIONAL,
    "KEYWORD_ONLY": inspect.Parameter.KEYWORD_ONLY,
    "VAR_KEYWORD": inspect.Parameter.VAR_KEYWORD,
}


# ---------------------------------------------------------------------------- values (defaults, extra)


class OpaqueValue:
    """A default that is not plain data (an object): known to exist, shown by its repr."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueValue) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def encode_value(v: Any) -> Any:
    """A Python value as JSON; tuples, dicts, non-finite floats and objects are tagged so that
    `decode_value` gives back an equal value (objects: an `OpaqueValue` with their repr)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"$float": repr(v)}
    if isinstance(v, list):
        return [encode_value(x) for x in v]
    if isinstance(v, tuple):
        return {"$tuple": [encode_value(x) for x in v]}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"$dict": {k: encode_value(x) for k, x in v.items()}}
    if isinstance(v, Use):  # a component default: `use("Attention", heads=4)`
        return {"$use": [v.name, {k: encode_value(x) for k, x in v.kwargs}]}
    return {"$object": repr(v)}


def decode_value(v: Any) -> Any:
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    if isinstance(v, dict):
        (tag, inner), = v.items()
        if tag == "$tuple":
            return tuple(decode_value(x) for x in inner)
        if tag == "$dict":
            return {k: decode_value(x) for k, x in inner.items()}
        if tag == "$float":
            return float(inner)
        if tag == "$use":
            name, kwargs = inner
            return use(name, **{k: decode_value(x) for k, x in kwargs.items()})
        return OpaqueValue(inner)
    return v


# ---------------------------------------------------------------------------- annotations


_OPAQUE: dict[str, type] = {}


def opaque_class(dotted: str) -> type:
    """A stand-in for a class the checker does not model (`torch.optim.Optimizer`): the same
    `__name__` (what messages print), and no value ever matches or mismatches it."""
    if dotted not in _OPAQUE:
        module, _, name = dotted.rpartition(".")
        _OPAQUE[dotted] = type(name, (), {"__module__": module or "builtins", "__qualname__": name})
    return _OPAQUE[dotted]


_ABC = {n: getattr(collections.abc, n) for n in ("Iterable", "Iterator", "Sequence", "MutableSequence", "Mapping",
                                                  "MutableMapping", "Callable", "Collection", "Set")}
_BUILTIN = {t.__name__: t for t in (int, float, str, bool, bytes, list, tuple, dict, set, frozenset, object, type)}
_NAMESPACE: dict[str, Any] = {**_BUILTIN, **_ABC, **INTERFACES, "None": None, "Any": Any, "Literal": typing.Literal,
                              "Union": typing.Union, "Optional": typing.Optional, "typing": typing}


def hint_to_text(h: Any) -> str:
    """An evaluated annotation as text that `text_to_hint` turns back into an equal object."""
    if h is None or h is type(None):
        return "None"
    if h is Ellipsis:
        return "..."
    if h is Any:
        return "Any"
    origin, args = typing.get_origin(h), typing.get_args(h)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is typing.Union:
        return "Union[" + ", ".join(hint_to_text(a) for a in args) + "]"
    if origin is types.UnionType:
        return " | ".join(hint_to_text(a) for a in args)
    if origin is not None:
        if isinstance(h, types.GenericAlias):
            head = _class_text(origin)
        else:  # typing.List[int], typing.Sequence[str]: keep the typing alias
            head = f"typing.{getattr(h, '_name', None) or _class_text(origin)}"
        if origin is collections.abc.Callable and args and isinstance(args[0], list):
            return f"{head}[[{', '.join(hint_to_text(a) for a in args[0])}], {hint_to_text(args[1])}]"
        return f"{head}[{', '.join(hint_to_text(a) for a in args)}]" if args else head
    if isinstance(h, type):
        return _class_text(h)
    raise ValueError(f"cannot write annotation {h!r}")


def _class_text(cls: Any) -> str:
    if isinstance(cls, type) and INTERFACES.get(cls.__name__) is cls:
        return cls.__name__
    if isinstance(cls, type) and cls.__module__ == "builtins" and _BUILTIN.get(cls.__name__) is cls:
        return cls.__name__
    if isinstance(cls, type) and cls.__module__ == "collections.abc" and _ABC.get(cls.__name__) is cls:
        return cls.__name__
    if isinstance(cls, type) and cls.__module__ == "typing" and getattr(typing, cls.__name__, None) is cls:
        return f"typing.{cls.__name__}"
    return f"Opaque({getattr(cls, '__module__', '?') + '.' + getattr(cls, '__qualname__', repr(cls))!r})"


@functools.cache
def text_to_hint(text: str) -> Any:
    """Evaluate an annotation written by `hint_to_text` with nothing but typing in scope."""
    value = _eval(ast.parse(text, mode="eval").body)
    return type(None) if value is None else value  # as `typing.get_type_hints` gives it


def _eval(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in _NAMESPACE:
            raise ValueError(f"unknown name {node.id!r} in an annotation")
        return _NAMESPACE[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "typing" \
            and not node.attr.startswith("_"):
        return getattr(typing, node.attr)
    if isinstance(node, ast.Subscript):
        base = _eval(node.value)
        inner = node.slice
        arg = tuple(_eval(e) for e in inner.elts) if isinstance(inner, ast.Tuple) else _eval(inner)
        return base[arg]
    if isinstance(node, ast.List):
        return [_eval(e) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _eval(node.left) | _eval(node.right)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Opaque"
            and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and not node.keywords):
        return opaque_class(str(node.args[0].value))
    raise ValueError(f"unsupported annotation syntax: {ast.dump(node)[:80]}")


# ---------------------------------------------------------------------------- entries


@dataclass
class ManifestEntry:
    """A built-in registered name as the manifest records it (`registry.Entry`'s interface, `obj` None)."""

    kind: str
    name: str
    module: str
    qualname: str
    doc: str
    outputs_spec: tuple[str, ...]
    extra: dict
    raw: dict = field(repr=False)
    obj: Any = None  # nothing imported: a path that needs the class calls `registry.load_builtins()` first

    @classmethod
    def from_json(cls, d: dict) -> ManifestEntry:
        return cls(kind=d["kind"], name=d["name"], module=d["module"], qualname=d.get("qualname", d["name"]),
                   doc=d.get("doc", ""), outputs_spec=tuple(d.get("outputs", ())),
                   extra={k: decode_value(v) for k, v in d.get("extra", {}).items()}, raw=d)

    @cached_property
    def signature(self) -> inspect.Signature:
        params = self.raw.get("params")
        if params is None:
            raise ValueError(f"no signature found for {self.name}")
        ret = self.raw.get("returns", inspect.Signature.empty)
        if isinstance(ret, dict):
            ret = text_to_hint(ret["hint"])
        return inspect.Signature([_parameter(p) for p in params], return_annotation=ret,
                                 __validate_parameters__=False)

    @cached_property
    def type_hints(self) -> dict[str, Any]:
        return {k: text_to_hint(v) for k, v in self.raw.get("type_hints", {}).items()}

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The interfaces (`l3m.interfaces`) the class implements: where it may stand as a component."""
        return tuple(self.raw.get("interfaces", ()))

    @cached_property
    def inputs(self) -> tuple:
        from l3m.registry import Port

        return tuple(Port(n, optional=o, variadic=v) for n, o, v in self.raw.get("inputs", ()))

    @cached_property
    def outputs(self) -> tuple:
        from l3m.registry import outputs_from_spec

        return outputs_from_spec(self.outputs_spec)

    @property
    def outputs_attr(self) -> tuple[str, ...] | None:
        """The class's own `outputs` attribute (None when it has none), before kind defaults."""
        v = self.raw.get("outputs_attr")
        return None if v is None else tuple(v)

    @property
    def shapes(self) -> str | None:
        return self.raw.get("shapes")

    @cached_property
    def checks(self) -> tuple[tuple[str, str], ...]:
        return tuple((e, m) for e, m in self.raw.get("checks", ()))

    def trait(self, name: str) -> Any:
        """A plain class attribute the checker reads (`token_policy`); None when the class has none."""
        return decode_value(self.raw.get("traits", {}).get(name))

    def hook(self, name: str) -> Any:
        """A static method the checker calls (`port_problem`), imported from its torch-free module."""
        where = self.raw.get("hooks", {}).get(name)
        if where is None:
            return None
        module, _, attr = where.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def _parameter(p: dict) -> inspect.Parameter:
    kind = _KIND_NAMES[p["kind"]]
    default = decode_value(p["default"]) if "default" in p else inspect.Parameter.empty
    if "annotation" in p:
        annotation: Any = p["annotation"]
    elif "annotation_hint" in p:
        annotation = text_to_hint(p["annotation_hint"])
    else:
        annotation = inspect.Parameter.empty
    return inspect.Parameter(p["name"], kind, default=default, annotation=annotation)


_ENTRIES: list[ManifestEntry] | None = None


def manifest_entries() -> list[ManifestEntry]:
    """Every built-in entry of the checked-in manifest, in registration order (read once)."""
    global _ENTRIES
    if _ENTRIES is None:
        data = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise RuntimeError(f"{MANIFEST_PATH} has format {data.get('format')}, expected {FORMAT}; regenerate "
                               "it with `python -m l3m.registry_manifest --write`")
        _ENTRIES = [ManifestEntry.from_json(d) for d in data["entries"]]
    return _ENTRIES


def builtin_modules() -> set[str]:
    """The modules that define built-in entries (a registration from elsewhere is an extension)."""
    return {e.module for e in manifest_entries()}

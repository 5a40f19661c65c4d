"""Registry metadata as hover and completion show it: signatures, argument types and defaults, ports.

Reads `l3m.registry` (which answers from its manifest without importing torch) and, for names that a
file's `extension` modules register, the entries read from their source (never imported).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from l3m import registry
from l3m.dsl import Compiled

_RUNTIME = registry.RUNTIME_PARAMS


def lookup(name: str, compiled: Compiled | None = None) -> Any | None:
    """The registry entry (or an extension's static entry) called `name`."""
    entry = _extension_entries(compiled).get(name)
    if entry is not None:
        return entry
    try:
        return registry.lookup(name)
    except Exception:  # a broken registry must not take the editor's hover down
        return None


def names(kinds: tuple[str, ...], compiled: Compiled | None = None) -> list[Any]:
    """Entries of these kinds, built-in then the file's extensions."""
    out = []
    for kind in kinds:
        with contextlib.suppress(Exception):
            out += registry.entries(kind)
    out += [e for e in _extension_entries(compiled).values() if e.kind in kinds]
    return out


_EXT_CACHE: dict[tuple[str, str], dict] = {}


def _extension_entries(compiled: Compiled | None) -> dict:
    if compiled is None or compiled.program is None or not compiled.program.extensions:
        return {}
    from l3m.dsl.ext_locate import search_roots
    from l3m.dsl.ext_static import read_extension

    out: dict = {}
    for module, _span in compiled.program.extensions:
        key = (module, compiled.program.file)
        if key not in _EXT_CACHE:
            try:
                _EXT_CACHE[key] = read_extension(module, search_roots(compiled.program.file)).entries
            except Exception:
                _EXT_CACHE[key] = {}
        out.update(_EXT_CACHE[key])
    return out


def params(entry: Any) -> list[inspect.Parameter]:
    """The constructor's parameters that a file writes (the trainer supplies an optimizer's first, ...)."""
    try:
        ps = list(entry.signature.parameters.values())
    except Exception:
        return []
    return [p for p in ps[_RUNTIME.get(entry.kind, 0):] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def annotation(p: inspect.Parameter) -> str:
    ann = p.annotation
    if ann is inspect.Parameter.empty:
        return ""
    if isinstance(ann, str):
        return ann
    return inspect.formatannotation(ann).replace("typing.", "")


def literal(value: Any) -> str:
    """A Python default as it would be written in a `.l3m` file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return repr(value)


def param_text(p: inspect.Parameter) -> str:
    ann = annotation(p)
    text = p.name + (f": {ann}" if ann else "")
    if p.default is not inspect.Parameter.empty:
        text += f" = {literal(p.default)}"
    return text


def ports_text(entry: Any) -> str:
    def names(ports) -> str:
        if ports is None:
            return "?"
        return ", ".join(("*" if p.variadic else "") + p.name + ("?" if p.optional and not p.variadic else "")
                         for p in ports) or "()"

    return f"{names(getattr(entry, 'inputs', ()))} -> {names(getattr(entry, 'outputs', ()))}"


def signature_text(entry: Any) -> str:
    ps = params(entry)
    if len(ps) <= 3:
        return f"{entry.name}(" + ", ".join(param_text(p) for p in ps) + ")"
    return f"{entry.name}(\n" + "".join(f"    {param_text(p)},\n" for p in ps) + ")"


def hover_entry(entry: Any) -> str:
    """Markdown: the signature, the ports, the declared shapes and the doc."""
    kind = registry.KIND_PHRASE.get(entry.kind, entry.kind)
    parts = [f"```l3m\n{signature_text(entry)}\n```", f"{kind[0].upper()}{kind[1:]}"
             + (f" from `{entry.module}`" if getattr(entry, "module", "") else "") + "."]
    if entry.kind not in ("optimizer", "schedule", "source"):
        parts.append(f"Ports: `{ports_text(entry)}`")
    elif entry.kind == "source":
        parts.append(f"Writes: `{ports_text(entry).split(' -> ', 1)[1]}`")
    shapes = getattr(entry, "shapes", None)
    if isinstance(shapes, str) and shapes:
        parts.append(f"Shapes: `{shapes}`")
    if getattr(entry, "doc", ""):
        parts.append(entry.doc)
    return "\n\n".join(parts)


def hover_param(entry: Any, name: str) -> str | None:
    p = next((p for p in params(entry) if p.name == name), None)
    if p is None:
        return None
    text = f"```l3m\n{param_text(p)}\n```\n\nArgument of `{entry.name}`"
    if p.default is inspect.Parameter.empty:
        text += " (required)"
    return text + "."

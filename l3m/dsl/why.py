"""`l3m plan FILE --why PATH`: an argument's value and where it came from, step by step through components.

PATH is a node's path (as plan and graph print it: `vit.trunk.blocks`, `loss.ce`, `optimizer`) followed by
argument names, through component values: `vit.trunk.blocks.attn.pos`. The model's own name may be left
out (`trunk.blocks.attn.pos`). Works on the compiled program alone: nothing is built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Call, Origin, Program, show


class UnknownPath(ValueError):
    """PATH names no argument of the program; the message says what would."""


@dataclass
class Step:
    path: str
    value: Any
    origin: Origin | None  # None: nothing set it (an argument left to the constructor's default)


def _entry(program: Program, name: str) -> Any:
    from l3m import registry

    return program.static_entries.get(name) or registry.lookup(name)


def _params(program: Program, call: Call) -> dict[str, inspect.Parameter]:
    entry = _entry(program, call.type_name)
    try:
        return dict(entry.signature.parameters) if entry is not None else {}
    except (TypeError, ValueError):
        return {}


def _roots(program: Program) -> dict[str, Call]:
    roots = {n.path: n.call for n in program.nodes if n.valid}
    for kind in ("optimizer", "schedule"):
        call = getattr(program, kind)
        if call is not None:
            roots[kind] = call
    return roots


def trace(program: Program, path: str) -> list[Step]:
    """The steps from the node to the argument PATH names (raises `UnknownPath`)."""
    section, _, field = path.partition(".")
    if section in program.sections and field and "." not in field:
        return [_setting(program, section, field)]
    roots = _roots(program)
    root = program.root_model
    candidates = [path] + ([f"{root.path}.{path}"] if root is not None else [])
    for full in candidates:
        parts = full.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            if head in roots:
                return _walk(program, head, roots[head], parts[cut:])
    every = list(roots) + [f"{p}.{a}" for p, c in roots.items() for a in _params(program, c)]
    for full in candidates:
        if full in roots:
            args = ", ".join(list(_params(program, roots[full]))[:4])
            raise UnknownPath(f"'{path}' is a block; --why takes one of its arguments: {path}.NAME"
                              + (f" (it has {args}, ...)" if args else ""))
    raise UnknownPath(f"'{path}' names no argument in the program" + (
        f"; {did_you_mean(path, every)}" if did_you_mean(path, every) else
        "; give a node's path (as `l3m plan` prints it) and an argument name, e.g. vit.trunk.blocks.depth"))


def _setting(program: Program, section: str, field: str) -> Step:
    """A settings section's field (`train.steps`): written, given on the command line, or the default."""
    from l3m.config import section_fields

    sec = program.sections[section]
    fields = section_fields(section)
    if field not in fields:
        raise UnknownPath(f"section '{section}' has no setting '{field}'"
                          + (f"; {did_you_mean(field, fields)}" if did_you_mean(field, fields) else ""))
    path = f"{section}.{field}"
    if field not in sec.values:
        import dataclasses

        from l3m.config import SECTION_SCHEMAS

        f = next(f for f in dataclasses.fields(SECTION_SCHEMAS[section]) if f.name == field)
        value = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        return Step(path, value, Origin("signature", None, f"the `{section}` section"))
    span = sec.spans.get(field)
    if span is not None and span.file.startswith("<override"):
        return Step(path, sec.values[field], Origin("command line", None, f"{path}=..."))
    return Step(path, sec.values[field], Origin("setting", span))


def _walk(program: Program, head: str, call: Call, names: list[str]) -> list[Step]:
    steps: list[Step] = []
    where = head
    for i, name in enumerate(names):
        params = _params(program, call)
        where = f"{where}.{name}"
        if name in call.kwargs:
            value = call.kwargs[name]
            steps.append(Step(where, value, call.origins.get(name)))
        elif name in params:
            p = params[name]
            value = None if p.default is p.empty else p.default
            steps.append(Step(where, value, _unset(program, call, name, p)))
        else:
            raise UnknownPath(f"'{call.type_name}' at '{where.rsplit('.', 1)[0]}' has no argument '{name}'"
                              + (f"; {did_you_mean(name, params)}" if did_you_mean(name, params) else
                                 f"; its arguments are: {', '.join(params) or 'none'}"))
        if i + 1 < len(names):
            if not isinstance(value, Call):
                raise UnknownPath(f"'{where}' is {show(value)}, not a component: it has no argument "
                                  f"'{names[i + 1]}'")
            call = value
    return steps


def _unset(program: Program, call: Call, name: str, p: inspect.Parameter) -> Origin:
    from l3m.interfaces import INTERFACES

    entry = _entry(program, call.type_name)
    supplied = {s for i in getattr(entry, "interfaces", ()) or () for s in INTERFACES[i].supplied}
    if name in supplied and p.default is p.empty:
        return Origin("host", None, f"{'/'.join(getattr(entry, 'interfaces', ()))} hosts supply '{name}'")
    return Origin("signature", None, call.type_name)


def explain(program: Program, path: str) -> str:
    """The text `--why` prints: the value, then each step's origin."""
    steps = trace(program, path)
    last = steps[-1]
    lines = [f"{last.path} = {_value(last)}"]
    for s in steps:
        lines.append(f"  {s.path}: {_value(s)}  <- {s.origin}")
    return "\n".join(lines)


def _value(s: Step) -> str:
    if s.origin is not None and s.origin.kind == "host":
        return "(from the host)"
    return show(s.value)

"""A registered name with its arguments -> `ir.Call`: the name looked up for the role it stands
in, the arguments bound to the constructor's parameters (`binding.bind`), overridden, evaluated
and type-checked against the constructor's annotations."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from l3m import registry
from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Call, Span
from l3m.dsl.resolver.binding import Slot, Wording, argument_words, bind, report_unbound
from l3m.dsl.resolver.context import Fail
from l3m.dsl.resolver.evaluate import Env
from l3m.dsl.resolver.tools import Tools
from l3m.dsl.typecheck import Symbol, describe, mismatch

if typing.TYPE_CHECKING:
    from l3m.dsl.resolver.entries import Entry

# Which registry kinds a node may name, by where it stands.
ROLE_KINDS = {"data": ("source", "generator"), "block": ("block",), "loss": ("loss",), "metric": ("metric",),
              "optimizer": ("optimizer",), "schedule": ("schedule",)}

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def resolve_call(c: ast.CallExpr, env: Env, kinds: tuple[str, ...], path: str, t: Tools) -> Call | None:
    """The call, or None when its name does not resolve to one of `kinds` (reported). `path` is
    where it stands (`vit.trunk.blocks`, `optimizer`): argument `x` is overridden as `path.x`.
    Arguments that fail to evaluate are kept as None, so that one bad value does not hide the others."""
    entry = find_entry(c, env, kinds, t)
    if entry is None:
        return None
    t.catalog.report_skipped(entry, c.span)
    by_name, slots, words = _parameters(entry, c.dotted, t)
    pairs = [(name, a.value, a.span) for name, a in bind(c.args, slots, words, t.report)]
    overridden = set()
    for pname in by_name:
        ov = t.overrides.take(f"{path}.{pname}")
        if ov is not None:
            pairs = [(n, e, s) for n, e, s in pairs if n != pname] + [(pname, ov, ov.span)]
            overridden.add(pname)
    values: dict[str, tuple[Any, Span]] = {}
    for pname, expr, span in pairs:
        value_env = Env(t.evaluator.main) if pname in overridden else env
        try:
            value = t.evaluator.eval(expr, value_env)
        except Fail:
            values[pname] = (None, span)
            continue
        ann = entry.type_hints.get(pname, by_name[pname].annotation if pname in by_name else None)
        _typecheck(value, ann, pname, expr, env, c.dotted, t)
        values[pname] = (_plain(value), span)
    report_unbound(slots, values, words, c.span, t.report)
    call = Call(c.dotted, c.span)
    for pname, (value, span) in values.items():
        call.kwargs[pname] = value
        call.kwarg_spans[pname] = span
    return call


def _parameters(entry: Entry, name: str, t: Tools) -> tuple[dict[str, inspect.Parameter], list[Slot], Wording]:
    """The constructor's parameters the program may give (runtime ones left out), as slots;
    `name` is the entry as the program calls it."""
    key = ("arguments", name)
    if key not in t.memo:
        params = list(entry.signature.parameters.values())[registry.RUNTIME_PARAMS.get(entry.kind, 0):]
        by_name = {p.name: p for p in params if p.kind not in _VARIADIC}
        slots = [Slot(p.name, p.kind in _POSITIONAL, p.default is p.empty) for p in by_name.values()]
        t.memo[key] = by_name, slots, argument_words(name, open=any(p.kind is p.VAR_KEYWORD for p in params))
    return t.memo[key]


def find_entry(c: ast.CallExpr, env: Env, kinds: tuple[str, ...], t: Tools) -> Entry | None:
    """The registered entry `c` names, if it is of one of `kinds` (else reported: E201/E202)."""
    name = c.dotted
    entry = t.catalog.entry(name) if len(c.parts) == 1 else None
    if entry is None:
        if len(c.parts) > 1 or name in env.scope.defs:
            t.report.error("E202", f"'{name}' is a template; instantiate it with `model NAME = {name}(...) ins -> outs`",
                           c.span)
            return None
        pool = [n for k in kinds for n in t.catalog.names(k)]
        phrase = " or ".join(registry.KIND_PHRASE[k].split(" ", 1)[1] for k in kinds)
        t.report.error("E201", f"unknown {phrase} '{name}'", c.span,
                       did_you_mean(name, pool) or f"run `l3m blocks` to list {phrase}s")
        return None
    if entry.kind not in kinds:
        phrase = " or ".join(registry.KIND_PHRASE[k] for k in kinds)
        t.report.error("E202", f"'{name}' is {registry.KIND_PHRASE[entry.kind]}, but {phrase} is expected here", c.span)
        return None
    return entry


def _typecheck(value: Any, ann: Any, pname: str, expr: ast.Expr, env: Env, owner: str, t: Tools) -> None:
    """E205 for a value of the wrong type; E403 for a bare name that was neither a let nor a word
    the parameter accepts."""
    wrong = mismatch(value, ann) if ann is not None else None
    if not wrong:
        return
    if isinstance(value, Symbol) and "string" not in wrong and "'" not in wrong:
        visible = list(env.scope.lets) + list(env.params)
        t.report.error("E403", f"'{value}' is not defined", expr.span, did_you_mean(value, visible))
    else:
        opts = literal_options(ann)
        t.report.error("E205", f"argument '{pname}' of '{owner}' must be {wrong}, not {describe(value)}", expr.span,
                       did_you_mean(value, opts) if isinstance(value, str) and opts else None)


def _plain(value: Any) -> Any:
    """Symbols become ordinary strings once they have been type-checked."""
    if isinstance(value, Symbol):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def literal_options(ann: Any) -> list[str]:
    """The strings a `Literal[...]` annotation (possibly inside a union) allows, for 'did you mean'."""
    if typing.get_origin(ann) is typing.Literal:
        return [a for a in typing.get_args(ann) if isinstance(a, str)]
    out: list[str] = []
    for a in typing.get_args(ann):
        out += literal_options(a)
    return out

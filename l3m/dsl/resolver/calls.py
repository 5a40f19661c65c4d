"""A registered name with its arguments -> `ir.Call`: the name looked up for the role it stands
in, the arguments bound to the constructor's parameters (`binding.bind`), overridden, evaluated
and type-checked against the constructor's annotations. A component value (`pos = Rope2d()`, or a
`use(...)` signature default) goes through the same routine, nested, once its parameter's interface
says which entries fit; every argument records its `ir.Origin` (`plan --why`)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from l3m import registry
from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean, suggest
from l3m.dsl.ir import Call, Origin, Span
from l3m.dsl.limits import MAX_DEPTH
from l3m.dsl.resolver.binding import Slot, Wording, argument_words, bind, report_unbound
from l3m.dsl.resolver.context import Fail
from l3m.dsl.resolver.evaluate import Env, PendingCall
from l3m.dsl.resolver.tools import Tools
from l3m.dsl.typecheck import Symbol, describe, interfaces_in, mismatch, type_name
from l3m.interfaces import Use

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
    return bind_call(c, entry, env, path, t)


@dataclass
class Given:
    """One argument's value before it is checked: an expression to evaluate in `env`, or a value."""

    span: Span
    origin: Origin
    expr: ast.Expr | None = None
    env: Env | None = None
    value: Any = None


def bind_call(c: ast.CallExpr, entry: Entry, env: Env, path: str, t: Tools, supplied: tuple[str, ...] = (),
              depth: int = 0) -> Call:
    """The one routine for every call, a node's or a component's: arguments bound to the constructor's
    parameters, then (where the call did not write them) command-line overrides, `default` statements and
    materialised `use(...)` defaults, each evaluated and checked. `supplied`: parameters the host provides
    (a component's interface), so not required here, and skipped by positional arguments: a component's
    positional arguments start after what its host supplies (`SwiGLU(1024)` is `hidden`, `RMSNorm(1e-5)` `eps`)."""
    by_name, slots, words = _parameters(entry, c.dotted, t)
    if supplied:
        slots = [s._replace(positional=False) if s.name in supplied else s for s in slots]
    given = {name: Given(a.span, _written(a, env), a.value, env) for name, a in bind(c.args, slots, words, t.report)}
    return _complete(entry, c.dotted, c.span, given, env.scope.file, path, t, supplied, depth)


def _written(a: ast.Arg, env: Env) -> Origin:
    """An argument written at the call; one that passes a template parameter on says where that was given."""
    v = a.value
    if isinstance(v, ast.Ref) and len(v.parts) == 1 and v.parts[0] in env.param_spans:
        return Origin("argument", a.span, param=v.parts[0], param_span=env.param_spans[v.parts[0]])
    return Origin("argument", a.span)


def _complete(entry: Entry, owner: str, span: Span, given: dict[str, Given], file: str, path: str, t: Tools,
              supplied: tuple[str, ...], depth: int) -> Call:
    by_name, slots, words = _parameters(entry, owner, t)
    for pname in by_name:  # command line > the call's own argument > `default` > host > signature
        ov = t.overrides.take(f"{path}.{pname}")
        if ov is not None:
            given[pname] = Given(ov.span, Origin("command line", None, f"{path}.{pname}=..."), ov,
                                 Env(t.evaluator.main))
    defaults = t.defaults
    for pname, param in by_name.items():
        if pname in given:
            continue
        d = defaults.lookup(entry.name, pname, file) if defaults is not None else None
        if d is not None:
            given[pname] = Given(d.span, d.origin, value=d.value)
        elif isinstance(param.default, Use):  # a component default: resolved as if written here
            given[pname] = Given(span, Origin("use", None, f"{entry.name}.{pname}"), value=param.default)
    values: dict[str, tuple[Any, Span, Origin]] = {}
    for pname, g in given.items():
        value = g.value
        if g.expr is not None:
            try:
                value = t.evaluator.eval(g.expr, g.env)
            except Fail:
                values[pname] = (None, g.span, g.origin)
                continue
        ann = entry.type_hints.get(pname, by_name[pname].annotation if pname in by_name else None)
        where = g.expr.span if g.expr is not None else g.span
        if g.origin.kind in ("default", "command line") and g.expr is None:  # written in a `default`
            with t.report.outside_instances():
                value = _check_value(value, ann, pname, owner, where, g, f"{path}.{pname}", file, t, depth)
        else:
            value = _check_value(value, ann, pname, owner, where, g, f"{path}.{pname}", file, t, depth)
        values[pname] = (_plain(value), g.span, g.origin)
    if supplied:
        slots = [s._replace(required=False) if s.name in supplied else s for s in slots]
    report_unbound(slots, values, words, span, t.report)
    call = Call(owner, span)
    for pname, (value, vspan, origin) in values.items():
        call.kwargs[pname] = value
        call.kwarg_spans[pname] = vspan
        call.origins[pname] = origin
    return call


def _check_value(value: Any, ann: Any, pname: str, owner: str, where: Span, g: Given, path: str, file: str,
                 t: Tools, depth: int) -> Any:
    """The value checked against the parameter's annotation; components resolved (`ir.Call`), nested."""
    if isinstance(value, list) and any(getattr(v, "is_component", False) or isinstance(v, Use) for v in value):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis] if ann is not None else []
        inner = next((a for a in args if interfaces_in(a)), None)
        return [_check_value(v, inner, pname, owner, where, g, f"{path}.{i}", file, t, depth)
                for i, v in enumerate(value)]
    if isinstance(value, (PendingCall, Use)):
        return resolve_component(value, ann, pname, owner, where, path, file, t, depth)
    if ann is not None:
        _typecheck(value, ann, pname, g.expr, g.env, owner, t, where)
    return value


def resolve_component(value: PendingCall | Use, ann: Any, pname: str, owner: str, where: Span, path: str,
                      file: str, t: Tools, depth: int) -> Call | None:
    """A component value given to parameter `pname` of `owner` (annotated `ann`) -> `ir.Call`, its own
    arguments bound by `bind_call`; None when it does not fit (reported)."""
    wanted = interfaces_in(ann) if ann is not None else []
    name = value.type_name if isinstance(value, PendingCall) else value.name
    span = value.expr.span if isinstance(value, PendingCall) else where
    if depth >= MAX_DEPTH:
        t.report.error("E004", f"components nest deeper than {MAX_DEPTH} levels", span,
                       "does a component's `use(...)` default name itself?")
        return None
    if not wanted:
        shown = type_name(ann) if ann is not None and ann is not inspect.Parameter.empty else "a plain value"
        t.report.error("E205", f"argument '{pname}' of '{owner}' takes no component; it must be {shown}, "
                       f"not the component '{name}(...)'", span)
        return None
    fitting = _implementing(wanted, t)
    phrase = " or ".join(i.__name__ for i in wanted)
    entry = t.catalog.entry(name) if "." not in name else None
    if entry is None:
        if isinstance(value, PendingCall) and (len(value.expr.parts) > 1 or name in value.env.scope.defs):
            t.report.error("E202", f"'{name}' is a template; a component argument names a registered "
                           f"{phrase}", span, _fits(fitting))
        else:
            t.report.error("E201", f"unknown component '{name}' (argument '{pname}' of '{owner}' takes {_a(phrase)})",
                           span, did_you_mean(name, fitting) or _fits(fitting))
        return None
    implemented = [i for i in wanted if i.__name__ in (getattr(entry, "interfaces", ()) or ())]
    if not implemented:
        has = " and ".join(getattr(entry, "interfaces", ()) or ())
        what = _a(has) if has else f"{registry.KIND_PHRASE.get(entry.kind, entry.kind)} that is no component"
        t.report.error("E205", f"argument '{pname}' of '{owner}' must be {_a(phrase)} component, not '{name}' "
                       f"({what})", span, _fits(fitting))
        return None
    t.catalog.report_skipped(entry, span)
    supplied = tuple(dict.fromkeys(p for i in implemented for p in i.supplied))
    if isinstance(value, PendingCall):
        return bind_call(value.expr, entry, value.env, path, t, supplied, depth + 1)
    origin = Origin("use", None, f"{owner}.{pname}")
    given = {k: Given(span, origin, value=v) for k, v in value.kwargs}
    return _complete(entry, name, span, given, file, path, t, supplied, depth + 1)


def _a(phrase: str) -> str:
    return ("an " if phrase[:1] in "AEIOU" else "a ") + phrase


def _implementing(wanted: list, t: Tools) -> list[str]:
    """The names of the entries that implement any of `wanted` (for 'did you mean' and help)."""
    key = ("implementing", ",".join(sorted(i.__name__ for i in wanted)))
    if key not in t.memo:
        names = {i.__name__ for i in wanted}
        pool = list(registry.entries()) + list(t.catalog.static.values())
        t.memo[key] = sorted({e.name for e in pool if names & set(getattr(e, "interfaces", ()) or ())})
    return t.memo[key]


def _fits(fitting: list[str]) -> str | None:
    if not fitting:
        return None
    return "it takes: " + ", ".join(fitting[:12]) + (", ..." if len(fitting) > 12 else "")


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
        if len(c.parts) > 1 and c.parts[0] in env.scope.broken_imports:
            return None  # the import's own error says it
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


def _typecheck(value: Any, ann: Any, pname: str, expr: ast.Expr | None, env: Env | None, owner: str, t: Tools,
               where: Span | None = None) -> None:
    """E205 for a value of the wrong type; E403 for a bare name that was neither a let nor a word
    the parameter accepts."""
    wrong = mismatch(value, ann) if ann is not None else None
    if not wrong:
        return
    span = expr.span if expr is not None else where
    if isinstance(value, Symbol) and "string" not in wrong and "'" not in wrong:
        visible = (list(env.scope.lets) + list(env.params)) if env is not None else []
        let = _let_named(expr, env)
        if let is not None and isinstance(let.value, ast.Ref) and let.value.dotted == value:
            # `let dim = undefined_name`: said at the let, and the same words at every use, so it is said once
            t.report.error("E403", f"'{value}' is not defined", let.value.span, did_you_mean(value, visible),
                           notes=[(f"the value of let '{let.name}', which arguments of blocks use", None)])
            return
        fitting = _implementing(interfaces_in(ann), t) if interfaces_in(ann) else []
        if fitting:  # a component named without its parentheses, or misspelt
            close = value if value in fitting else suggest(value, fitting)
            help = f"a component is a call: write `{close}()`" if close else did_you_mean(value, visible)
            t.report.error("E403", f"'{value}' is not defined", span, help or _fits(fitting))
            return
        t.report.error("E403", f"'{value}' is not defined", span, did_you_mean(value, visible))
    else:
        opts = literal_options(ann)
        t.report.error("E205", f"argument '{pname}' of '{owner}' must be {wrong}, not {describe(value)}", span,
                       did_you_mean(value, opts) if isinstance(value, str) and opts else None)


def _let_named(expr: ast.Expr | None, env: Env | None) -> ast.LetDecl | None:
    """The `let` a bare reference (`dim`) names in `env`'s file, if it is one (not a template parameter)."""
    if env is None or not isinstance(expr, ast.Ref) or len(expr.parts) != 1 or expr.parts[0] in env.params:
        return None
    return env.scope.lets.get(expr.parts[0])


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

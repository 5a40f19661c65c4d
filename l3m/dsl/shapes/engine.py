"""Propagation: every node's declared shapes applied in dataflow order, from the data sources'
declarations and the file's `keys { }`, to a table of key types and diagnostics E750-E756.

Nothing here guesses: a node without a declaration (or with a rule that cannot tell) makes its
outputs unknown, and only what is certainly wrong is reported.
"""

from __future__ import annotations

import ast as pyast
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from l3m import registry
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Binding, KeyDecl, Node, Program, Span
from l3m.dsl.schedule import Dataflow
from l3m.dsl.shapes import rules
from l3m.dsl.shapes.spec import (
    PortSpec,
    ShapeError,
    ShapeSpec,
    SpecSyntaxError,
    TensorType,
    check_names,
    dim_names,
    dim_text,
    eval_check,
    format_message,
    parse_check,
    parse_spec,
)
from l3m.dsl.shapes.table import ShapeTable
from l3m.dsl.shapes.unify import ELLIPSIS, Env, Mismatch, match
from l3m.dsl.sigparams import component_args, defaults, named_names

_DTYPE_ALIASES = {"float": "float", "float32": "float", "float16": "float", "bfloat16": "float", "bf16": "float",
                  "half": "float", "double": "float", "float64": "float", "long": "long", "int64": "long",
                  "int": "int", "int32": "int", "bool": "bool"}
_INTEGER = ("long", "int")
DERIVED = ("tokenizer_vocab",)  # names a source's declaration may use beyond its arguments


@dataclass
class _Input:
    port: str  # "x", or "xs[0]" for a variadic port
    key: str
    version: int
    binding: Binding
    writer: Node | None
    type: TensorType


def check_shapes(program: Program, flow: Dataflow) -> tuple[ShapeTable, list[Diagnostic]]:
    """The type of every key version and the diagnostics about them (contract C3).

    The table is what all data sources have in common. When sources disagree (an eval set at another
    image size or sequence length), the merged dims are unknown and would check nothing, so the graph is
    also followed from each source alone and what only that source breaks is reported with its name."""
    walk = _propagate(program, flow, None)
    diags = list(walk.diags)
    if any(len({str(t) for _, t in seen}) > 1 for seen in walk.source_types.values()):
        reported = {_where(d) for d in diags}
        for source in program.of_role("source"):
            for d in _propagate(program, flow, source.path).diags:
                if _where(d) not in reported:
                    reported.add(_where(d))
                    diags.append(replace(d, notes=[*d.notes, (f"with the data from '{source.path}'", source.span)]))
    return walk.table, diags


def _where(d: Diagnostic) -> tuple:
    return (d.code, str(d.span) if d.span else None)


def _propagate(program: Program, flow: Dataflow, only_source: str | None) -> _Walk:
    """One walk in dataflow order; `only_source`: the other data sources are left out."""
    walk = _Walk(program, flow)
    for path in flow.order:  # empty when the dataflow has a cycle (E103)
        node = flow.node(path)  # not flow.graph: that imports networkx
        if only_source is not None and node.role == "source" and node.path != only_source:
            continue
        try:
            walk.visit(node)
        except Exception:  # a bug here must not stop lint: the node's outputs become unknown
            if os.environ.get("L3M_DEBUG"):
                raise
            walk._write(node, {})
    return walk


def normalize_dtype(name: str | None) -> str | None:
    return _DTYPE_ALIASES.get(name) if name else None


class _Walk:
    def __init__(self, program: Program, flow: Dataflow) -> None:
        self.program, self.flow = program, flow
        self.table = ShapeTable()
        self.diags: list[Diagnostic] = []
        self.source_types: dict[str, list[tuple[Node, TensorType]]] = {}
        # (node, binding) -> the version it writes, built once (a key may have thousands of versions)
        self.versions = {(id(w.node), id(w.binding)): w.version for ws in flow.writes.values() for w in ws}
        self.current_inputs: list[_Input] = []
        self.decls: dict[str, tuple[str | None, tuple]] = {}  # type name -> (shapes, checks)
        self.decl_done: set[tuple[str, str]] = set()

    # -- one node ---------------------------------------------------------------------------------------
    def entry(self, node: Node):
        """The node's registered entry: an extension's read from source first, then the registry."""
        if not node.valid:
            return None
        return self.program.static_entries.get(node.call.type_name) or registry.lookup(node.call.type_name)

    def visit(self, node: Node) -> None:
        entry = self.entry(node)
        decl = self.decls.get(node.call.type_name) if entry is not None else (None, ())
        if decl is None:
            decl = self.decls[node.call.type_name] = declarations(entry)
        shapes, checks = decl
        spec = None
        if shapes:
            try:
                spec = parse_spec(shapes)
            except SpecSyntaxError as e:
                self._report("E756", f"{_who(node)} declares shapes that cannot be read: {e}", node.call.type_span)
        if not shapes and not checks and not (self.program.keys and node.writes):
            self._write(node, {})  # nothing declared: its outputs are unknown
            return
        args, spans = _arguments(node, entry)
        inputs = self._inputs(node, entry)
        outputs: dict[str, TensorType] = {}
        env = Env({k: _as_dim(v) for k, v in args.items()})
        if spec is not None and spec.rule is None:
            if node.role == "source":
                env.args.update(self._derived(node, entry, spec, env))
            outputs = self._apply(node, spec, inputs, env, spans)
        elif spec is not None and spec.rule is not None:
            outputs = self._rule(node, spec.rule, args, inputs, spans)
        self._checks(node, checks, env, args, spans, inputs)
        self._write(node, outputs)

    def _inputs(self, node: Node, entry) -> list[_Input]:
        out = []
        counts: dict[str, int] = {}
        entry_ports = {}
        if entry is not None:
            entry_ports = {p.name: p for p in (entry.inputs or ())}
        for i, b in enumerate(node.reads):
            w = self.flow.reads.get((node.path, i))
            if w is None or b.port is None:
                continue
            port = b.port
            if entry_ports.get(port) is not None and entry_ports[port].variadic:
                n = counts.get(port, 0)
                counts[port] = n + 1
                port = f"{port}[{n}]"
            row = self.table.row((w.binding.key, w.version))
            t = row.type if row is not None else TensorType()
            out.append(_Input(port, w.binding.key, w.version, b, w.node, t))
        return out

    def _apply(self, node: Node, spec: ShapeSpec, inputs: list[_Input], env: Env,
               spans: dict[str, Span]) -> dict[str, TensorType]:
        by_port = {i.port: i for i in inputs}
        self.current_inputs = inputs
        # dims first (every port), so that bounds may use symbols bound by any port
        for ps in spec.inputs:
            inp = by_port.get(ps.name)
            if inp is None:
                continue
            self._dtype(node, ps, inp)
            if ps.dims is not None and inp.type.dims is not None:
                for m in match(ps.dims, inp.type.dims, env, ps.name):
                    self._mismatch(node, ps, inp, m, env, spans)
        for ps in spec.inputs:
            inp = by_port.get(ps.name)
            if inp is not None and ps.bound is not None:
                self._bound(node, ps, inp, env, spans)
        outputs = {ps.name: self._output(ps, env) for ps in spec.outputs}
        for name, t in outputs.items():  # `x -> x` without a dtype keeps the input's
            if t.dtype is None and name in by_port and by_port[name].type.dtype is not None:
                outputs[name] = TensorType(by_port[name].type.dtype, t.dims, t.bound)
        return outputs

    def _output(self, ps: PortSpec, env: Env) -> TensorType:
        dims = None
        if ps.dims is not None:
            out: list[int | str] = []
            for d in ps.dims:
                if d == ELLIPSIS:
                    out.extend(env.captured if env.captured is not None else (ELLIPSIS,))
                elif d == "_":
                    out.append("?")
                else:
                    v = env.value(d)
                    if v is None:
                        v = d if isinstance(d, str) and d not in env.args else "?"
                    out.append(v)
            dims = tuple(out)
        bound = env.value(ps.bound) if ps.bound is not None else None
        return TensorType(ps.dtype, dims, bound if isinstance(bound, int) else None)

    def _rule(self, node: Node, name: str, args: dict[str, Any], inputs: list[_Input],
              spans: dict[str, Span]) -> dict[str, TensorType]:
        fn = getattr(rules, name, None)
        if name.startswith("_") or not callable(fn):
            self._report("E756", f"{_who(node)} declares shapes '@{name}', but l3m/dsl/shapes/rules.py has no "
                         "such rule", node.call.type_span)
            return {}
        try:
            # A rule that needs the outputs the file binds (`Split`: one per part) says so.
            writes = {"writes": tuple(b.port for b in node.writes if b.port)} if getattr(fn, "reads_writes", False) else {}
            out = fn(dict(args), {i.port: i.type for i in inputs}, **writes)
        except ShapeError as e:
            where = spans.get(e.arg) if e.arg else None
            self._report("E755", f"{_who(node)}: {e.message}", where or node.call.type_span,
                         notes=_input_notes(inputs))
            return {}
        except Exception:  # a rule that trips over what it does not know: unknown, never an error
            return {}
        return {k: v for k, v in (out or {}).items() if isinstance(v, TensorType)}

    def _derived(self, node: Node, entry, spec: ShapeSpec, env: Env) -> dict[str, int | str]:
        used = set()
        for ps in spec.outputs:
            used |= set().union(*(dim_names(d) for d in ps.dims or ())) | (dim_names(ps.bound) if ps.bound else set())
        out: dict[str, int | str] = {}
        if "tokenizer_vocab" in used and "tokenizer_vocab" not in env.args:
            from l3m.dsl.tokcheck import source_vocab

            v = source_vocab(node, entry)
            out["tokenizer_vocab"] = v if isinstance(v, int) else "?"
        return out

    # -- checks -----------------------------------------------------------------------------------------
    def _checks(self, node: Node, checks, env: Env, args: dict[str, Any], spans: dict[str, Span],
                inputs: list[_Input]) -> None:
        if not checks:
            return
        values: dict[str, Any] = {k: v for k, v in args.items() if v is not None}
        values.update({k: v for k, v in env.symbols.items() if isinstance(v, int) and k not in args})
        for item in checks:
            try:
                expr, message = item
                parse_check(expr)
            except (SpecSyntaxError, TypeError, ValueError) as e:
                self._report("E756", f"{_who(node)} declares a check that cannot be read: {e}", node.call.type_span)
                continue
            if _eval_check(expr, values) is not False:
                continue
            names = check_names(expr)
            at = next((spans[n] for n in names if n in spans), None)
            notes = []
            symbols = [n for n in names if n in env.symbols and n not in args]
            if symbols:
                notes = [(f"{n} = {env.symbols[n]} from input '{env.origin.get(n, '?')}'", None) for n in symbols]
                notes += _input_notes(inputs)
            self._report("E754", f"{_who(node)}: {format_message(message, values)}", at or node.call.type_span,
                         notes=notes)

    # -- problems ---------------------------------------------------------------------------------------
    def _dtype(self, node: Node, ps: PortSpec, inp: _Input) -> None:
        want, have = ps.dtype, inp.type.dtype
        if want is None or have is None:
            return
        if (want == "float") != (have == "float") and "bool" not in (want, have):
            self._report("E751", f"{_who(node)} expects {ps.name} to hold {want} values, but '{inp.key}' holds "
                         f"{have} ({_writer(inp)})", inp.binding.span, notes=_writer_note(inp))

    def _mismatch(self, node: Node, ps: PortSpec, inp: _Input, m: Mismatch, env: Env,
                  spans: dict[str, Span]) -> None:
        want = "[" + ", ".join(_shown(d, env) for d in ps.dims) + "]"
        have = "[" + ", ".join(str(d) for d in inp.type.dims) + "]"
        if m.index is None:
            msg = (f"{_who(node)} expects {ps.name}: {want} ({m.expected} dims), but '{inp.key}' is {have} "
                   f"({m.actual} dims), {_writer(inp)}")
            at = inp.binding.span
        else:
            what = dim_text(m.dim)
            why = f"{what} = {m.expected}" if what != str(m.expected) else str(m.expected)
            origin = [f" (bound by '{env.origin[n]}')" for n in sorted(dim_names(m.dim)) if n in env.origin]
            msg = (f"{_who(node)} expects {ps.name}: {want}, but '{inp.key}' is {have}, {_writer(inp)}: "
                   f"dim {m.index} is {m.actual}, not {why}{''.join(origin[:1])}")
            arg = next((n for n in sorted(dim_names(m.dim)) if n in spans), None)
            at = spans[arg] if arg else inp.binding.span
        self._report("E750", msg, at, notes=_writer_note(inp) + ([(f"'{inp.key}' is read here", inp.binding.span)]
                                                                if at is not inp.binding.span else []))

    def _bound(self, node: Node, ps: PortSpec, inp: _Input, env: Env, spans: dict[str, Span]) -> None:
        accepted = env.value(ps.bound)
        have = inp.type.bound
        if not (isinstance(accepted, int) and isinstance(have, int)) or have <= accepted:
            return
        names = sorted(dim_names(ps.bound))
        arg = next((n for n in names if n in spans), None)
        what = dim_text(ps.bound)
        why = f"{what} = {accepted}" if what != str(accepted) else str(accepted)
        origin = next((env.origin[n] for n in names if n in env.origin), None)
        if origin:
            why += f", from '{origin}'"
        msg = (f"'{inp.key}' holds values up to {have - 1} ({_writer(inp)}), but {_who(node)} accepts "
               f"{ps.name} < {accepted} ({why})")
        at = spans[arg] if arg else inp.binding.span
        notes = _writer_note(inp)
        if origin:  # the input whose shape fixed the bound (a loss's classes: the logits)
            notes += [n for i in self.current_inputs if i.port == origin for n in _writer_note(i)]
        self._report("E753", msg, at, notes=notes,
                     help=f"make {arg} at least {have}" if arg else None)

    def _report(self, code: str, message: str, span: Span | None, notes=None, help: str | None = None) -> None:
        self.diags.append(Diagnostic(code, message, span, help, list(notes or [])))

    # -- writes and `keys { }` ----------------------------------------------------------------------------
    def _write(self, node: Node, outputs: dict[str, TensorType]) -> None:
        for b in node.writes:
            t = outputs.get(b.port, TensorType()) if b.port is not None else TensorType()
            version = self._version(node, b)
            if version is None:
                continue
            if node.role == "source" and version == 0:
                seen = self.source_types.setdefault(b.key, [])
                seen.append((node, t))
                # a Mixture (outputs "*") writes what its parts write: it adds nothing to learn from
                known = [s for n, s in seen if s.known or not _passes_through(n)]
                t = _merge(known) if known else t
                writers = tuple(n.path for n, _ in seen)
            else:
                writers = (node.path,)
            decl = self.program.keys.get(b.key)
            if decl is not None and version == 0:
                t = self._declared(decl, node, b, t)
            self.table.set(b.key, version, writers, t)

    def _version(self, node: Node, b: Binding) -> int | None:
        v = self.versions.get((id(node), id(b)))
        if v is None and node.role == "source":
            return 0  # another source wrote version 0 first
        return v

    def _declared(self, decl: KeyDecl, node: Node, b: Binding, t: TensorType) -> TensorType:
        """A `keys { }` declaration: checked against what the first writer gives, and the type when it
        gives nothing."""
        dtype = normalize_dtype(decl.dtype)
        dims = tuple(decl.shape) if decl.shape is not None else None
        problems = []
        if dtype and t.dtype and (dtype == "float") != (t.dtype == "float") and "bool" not in (dtype, t.dtype):
            problems.append(f"its dtype is {t.dtype}, not {decl.dtype}")
        if dims is not None and t.dims is not None:
            env = Env({})
            for m in match(dims, t.dims, env, decl.name):
                if m.index is None:
                    problems.append(f"it has {m.actual} dims, not {m.expected}")
                else:
                    problems.append(f"dim {m.index} is {m.actual}, not {dim_text(m.dim)}"
                                    + (f" = {m.expected}" if dim_text(m.dim) != str(m.expected) else ""))
        if problems and (decl.name, node.path) not in self.decl_done:
            self.decl_done.add((decl.name, node.path))
            self._report("E752", f"key '{decl.name}' is declared {decl.dtype}{_dims_text(dims)}, but "
                         f"{_who(node)} writes {t}: " + "; ".join(problems), decl.span,
                         notes=[(f"{_who(node)} writes it here", b.span)])
            return t
        return TensorType(t.dtype or dtype, t.dims if t.dims is not None else dims, t.bound)


# -- helpers ------------------------------------------------------------------------------------------------

def declarations(entry) -> tuple[str | None, tuple]:
    """An entry's `shapes` and `checks` (from the manifest entry, or the live class's attributes)."""
    if entry is None:
        return None, ()
    shapes = getattr(entry, "shapes", None)
    checks = getattr(entry, "checks", None)
    obj = getattr(entry, "obj", None)
    if shapes is None and obj is not None:
        shapes = getattr(obj, "shapes", None)
    if checks is None and obj is not None:
        checks = getattr(obj, "checks", None)
    return (shapes if isinstance(shapes, str) and shapes.strip() else None,
            tuple(checks) if isinstance(checks, (tuple, list)) else ())


def _arguments(node: Node, entry) -> tuple[dict[str, Any], dict[str, Span]]:
    """Constructor arguments after defaults (None when not given and no default) and the spans of
    those the file wrote."""
    args: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    if entry is None:
        return args, spans
    try:
        sig = entry.signature
        names = named_names(sig)
    except (TypeError, ValueError):
        return args, spans
    given = defaults(sig)
    for name in names:
        args[name] = given.get(name)
    call = node.call
    for name, value, span in zip(names, call.args, call.arg_spans):
        args[name], spans[name] = value, span
    for name, value in call.kwargs.items():
        args[name] = component_args(value)  # a component: a dict of its arguments (`sigparams.ComponentArgs`)
        if name in call.kwarg_spans:
            spans[name] = call.kwarg_spans[name]
    return args, spans


@lru_cache(maxsize=4096)
def _check_inputs(expr: str) -> tuple[str, ...]:
    """Every name a check reads (all that `eval_check`'s answer depends on besides the text)."""
    return tuple(sorted({n.id for n in pyast.walk(parse_check(expr)) if isinstance(n, pyast.Name)}))


_PLAIN = (int, str, bool, type(None))
_CHECK_MEMO: dict[tuple, bool | None] = {}


def _eval_check(expr: str, values: dict[str, Any]) -> bool | None:
    """`eval_check`, remembered by the values of the names the check reads: a thousand layers of the
    same block with the same arguments evaluate each of its checks once (values that are not plain
    scalars are evaluated every time)."""
    key: list[Any] = [expr]
    for name in _check_inputs(expr):
        v = values.get(name)
        if type(v) not in _PLAIN:
            return eval_check(expr, values)
        key.append((type(v), v))
    k = tuple(key)
    if k not in _CHECK_MEMO:
        if len(_CHECK_MEMO) >= 65536:
            _CHECK_MEMO.clear()
        _CHECK_MEMO[k] = eval_check(expr, values)
    return _CHECK_MEMO[k]


def _passes_through(node: Node) -> bool:
    entry = registry.lookup(node.call.type_name) if node.valid else None
    return entry is not None and "*" in tuple(getattr(entry, "outputs_spec", ()) or ())


def _as_dim(v: Any) -> int | str:
    return v if isinstance(v, int) and not isinstance(v, bool) else "?"


def _merge(types: list[TensorType]) -> TensorType:
    """What alternative sources of one key have in common (a dim they disagree on is unknown)."""
    first = types[0]
    if len(types) == 1:
        return first
    dtype = first.dtype if all(t.dtype == first.dtype for t in types) else None
    dims = first.dims
    for t in types[1:]:
        if dims is None or t.dims is None or len(dims) != len(t.dims):
            dims = None
            break
        dims = tuple(a if a == b else "?" for a, b in zip(dims, t.dims))
    bounds = [t.bound for t in types]
    bound = max(bounds) if all(isinstance(b, int) for b in bounds) else None
    return TensorType(dtype, dims, bound)


def _who(node: Node) -> str:
    return f"'{node.path}' ({node.call.type_name})"


def _writer(inp: _Input) -> str:
    if inp.writer is None:
        return "written by nothing known"
    return f"written by {_who(inp.writer)}"


def _writer_note(inp: _Input) -> list[tuple[str, Span | None]]:
    if inp.writer is None:
        return []
    w = next((b for b in inp.writer.writes if b.key == inp.key), None)
    return [(f"{_who(inp.writer)} writes '{inp.key}': {inp.type}", w.span if w else inp.writer.span)]


def _input_notes(inputs: list[_Input]) -> list[tuple[str, Span | None]]:
    return [(f"input {i.port} = '{i.key}': {i.type}", i.binding.span) for i in inputs if i.type.known]


def _shown(d, env: Env) -> str:
    if d in (ELLIPSIS, "_"):
        return d
    v = env.value(d)
    return str(v) if v is not None else dim_text(d)


def _dims_text(dims) -> str:
    return "" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"

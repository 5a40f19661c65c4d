"""Nodes and models -> `Program.nodes` / `Program.models`: stages, nested models, and template
instances, whose internal keys are namespaced by the instance's path (a key map) while their
ports are bound to the caller's keys."""

from __future__ import annotations

import contextvars
import typing
from typing import Any

from l3m import registry
from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Binding, Call, ModelInfo, Node, Program, Span
from l3m.dsl.limits import MAX_INSTANCE_DEPTH, MAX_NODES
from l3m.dsl.resolver.binding import (
    Slot,
    bind,
    port_words,
    report_unbound,
    template_argument_words,
    template_port_words,
)
from l3m.dsl.resolver.calls import ROLE_KINDS, resolve_call
from l3m.dsl.resolver.context import Fail
from l3m.dsl.resolver.evaluate import Env
from l3m.dsl.resolver.modules import ModuleScope
from l3m.dsl.resolver.tools import Tools
from l3m.dsl.typecheck import describe
from l3m.model import naming

if typing.TYPE_CHECKING:
    from l3m.dsl.resolver.entries import Entry

# A template instance's key map: its port names -> the caller's keys, plus "__prefix__" -> the
# instance's path, which namespaces every other key written inside it.
KeyMap = dict[str, str]

# What resolves a node's call instead of `resolve_call`, in this context (the language server's memo,
# `l3m.lsp.resolve_memo`, which calls `resolve_call` itself); None: `resolve_call`.
NODE_CALL_HOOK: contextvars.ContextVar = contextvars.ContextVar("l3m_node_call_hook", default=None)


class ModelBuilder:
    """Appends the nodes and models of one program, in declaration order (`Node.index`)."""

    def __init__(self, program: Program, tools: Tools):
        self.program = program
        self.t = tools
        self.index = 0
        self.paths: set[str] = set()  # node and model paths taken so far
        self.too_many_nodes = False

    # ------------------------------------------------------------------ models
    def model_item(self, item: ast.ModelDecl | ast.ModelInst, env: Env, parent: str | None,
                   key_map: KeyMap | None) -> None:
        """A model declared in place, or a template instance. Its path (`vit`, `clip.image`) is
        also the prefix of its override paths (`l3m.model.naming`)."""
        path = f"{parent}.{item.name}" if parent else item.name
        if path in self.paths:
            self.t.report.error("E207", f"model '{path}' is declared twice", item.span)
            return
        self.paths.add(path)
        if isinstance(item, ast.ModelInst):
            self._instance(item, env, parent, key_map)
            return
        self.program.models.append(ModelInfo(path, item.name, item.span, parent))
        self._model_body(item, env, path, key_map)

    def _model_body(self, body: ast.ModelDecl, env: Env, path: str, key_map: KeyMap | None) -> None:
        seen_stages: dict[str, Span] = {}
        for entry in body.order:
            if isinstance(entry, ast.StageDecl):
                if entry.name in seen_stages:
                    self.t.report.error("E207", f"stage '{entry.name}' appears twice in model '{path}'", entry.span,
                                        notes=[("first here", seen_stages[entry.name])])
                seen_stages[entry.name] = entry.span
                for n in entry.nodes:
                    self.node(n, env, "block", path=naming.block_path(path, entry.name, n.name), model=path,
                              stage=entry.name, key_map=key_map)
            else:
                self.model_item(entry, env, path, key_map)

    def _instance(self, inst: ast.ModelInst, env: Env, parent: str | None, key_map: KeyMap | None) -> None:
        """Expand a template: its parameters evaluated (caller's scope for arguments, the template's
        for defaults), its ports bound to the caller's keys, its body built under the instance's path."""
        report = self.t.report
        path = f"{parent}.{inst.name}" if parent else inst.name
        if len(report.instances) >= MAX_INSTANCE_DEPTH:
            report.error("E004", f"templates instantiate templates more than {MAX_INSTANCE_DEPTH} levels deep",
                         inst.span, "does a template instantiate itself?")
            return
        if len(self.program.nodes) > MAX_NODES:
            if not self.too_many_nodes:  # said once; the remaining instances are skipped
                report.error("E430", f"expanding templates makes more than {MAX_NODES:,} nodes", inst.span)
            self.too_many_nodes = True
            return
        d, def_scope = self._find_def(inst.call, env)
        if d is None:  # kept (invalid) with the instance's keys, so that its readers are not reported too
            stub = Node(inst.name, path, "block", Call(inst.call.dotted, inst.call.span), inst.span, self.index,
                        path, None, valid=False)
            stub.reads = [Binding(map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in inst.reads]
            stub.writes = [Binding(map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in inst.writes]
            self.index += 1
            self.program.nodes.append(stub)
            return
        inner = Env(def_scope)
        self._template_params(inst, d, env, inner, path)
        new_map: KeyMap = {}
        for ports, keys, direction in ((d.inputs, inst.reads, "input"), (d.outputs, inst.writes, "output")):
            slots = [Slot(name) for name, _ in ports]
            words = template_port_words(d.name, direction)
            bound = bind(keys, slots, words, report, _port)
            for port, k in bound:  # the caller's key, mapped as the caller's own keys are
                new_map[port] = map_key(k.key, key_map)
            report_unbound(slots, (port for port, _ in bound), words, inst.span, report)
        new_map["__prefix__"] = path
        self.program.models.append(ModelInfo(path, inst.name, inst.span, parent))
        with report.instance(d.name, inst.span):
            self._model_body(d.body, inner, path, new_map)

    def _template_params(self, inst: ast.ModelInst, d: ast.DefDecl, env: Env, inner: Env,
                         path: str) -> dict[str, Any]:
        """The parameters' values (overridable as `<instance path>.<param>`); each default is
        evaluated in the template's scope with the parameters before it (so `inner.params` fills
        as it goes). A failed one is None."""
        t = self.t
        slots = [Slot(p.name, required=p.default is None) for p in d.params]
        words = template_argument_words(d.name)
        given = {name: (a.value, env) for name, a in bind(inst.call.args, slots, words, t.report)}
        for name, a in bind(inst.call.args, slots, words, _Quiet()):
            inner.param_spans[name] = a.span
        for p in d.params:
            ov = t.overrides.take(f"{path}.{p.name}")
            if ov is not None:
                given[p.name] = (ov, Env(t.evaluator.main))
                inner.param_spans[p.name] = ov.span
            elif p.name not in given and p.default is not None:
                inner.param_spans[p.name] = p.default.span
        report_unbound(slots, given, words, inst.call.span, t.report)
        for p in d.params:
            try:
                if p.name in given:
                    expr, where = given[p.name]
                    inner.params[p.name] = t.evaluator.eval(expr, where)
                elif p.default is not None:
                    inner.params[p.name] = t.evaluator.eval(p.default, inner)
                else:
                    inner.params[p.name] = None
            except Fail:
                inner.params[p.name] = None
        return inner.params

    def _find_def(self, call: ast.CallExpr, env: Env) -> tuple[ast.DefDecl | None, ModuleScope | None]:
        """The template a `model NAME = T(...)` names, here or in an imported namespace."""
        report = self.t.report
        scope = env.scope
        if len(call.parts) == 2 and call.parts[0] in scope.imports:
            scope.used_imports.add(call.parts[0])
            scope = scope.imports[call.parts[0]]
        elif len(call.parts) == 2 and call.parts[0] in scope.broken_imports:
            return None, None  # the import's own error says it
        elif len(call.parts) != 1:
            report.error("E201", f"'{call.dotted}' is not a template: '{call.parts[0]}' is not an imported "
                         "namespace", call.span, did_you_mean(call.parts[0], scope.imports))
            return None, None
        name = call.parts[-1]
        if name in scope.defs:
            return scope.defs[name], scope
        entry = self.t.catalog.entry(name)
        if entry is not None:
            report.error("E202", f"'{name}' is {registry.KIND_PHRASE[entry.kind]}, not a template; "
                         "put blocks inside a stage", call.span)
        else:
            report.error("E201", f"no template named '{call.dotted}'", call.span, did_you_mean(name, scope.defs))
        return None, None

    # ------------------------------------------------------------------ nodes
    def node(self, n: ast.NodeDecl, env: Env, where: str, path: str, model: str = "", stage: str | None = None,
             key_map: KeyMap | None = None) -> None:
        """A data source/generator, block, loss or metric; `path` is its name everywhere, its
        override prefix included. One whose name does not resolve is kept (invalid) with its keys,
        so that one bad name does not cascade through the dataflow."""
        t = self.t
        if path in self.paths:
            t.report.error("E207", f"'{n.name}' is declared twice here", n.span)
            return
        self.paths.add(path)
        call = (NODE_CALL_HOOK.get() or resolve_call)(n.call, env, ROLE_KINDS[where], path, t)
        if call is None:
            role = {"data": "generator" if n.reads else "source"}.get(where, where)
            stub = Node(n.name, path, role, Call(n.call.dotted, n.call.span), n.span, self.index, model, stage,
                        valid=False)
            stub.reads = [Binding(map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in n.reads]
            stub.writes = [Binding(map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in n.writes]
            self.index += 1
            self.program.nodes.append(stub)
            return
        entry = t.catalog.entry(call.type_name)
        role = entry.kind if where == "data" else where
        weight = self._loss_weight(n, env, path) if where == "loss" else 1.0
        node = Node(name=n.name, path=path, role=role, call=call, span=n.span, index=self.index, model=model,
                    stage=stage, weight=float(weight))
        self.index += 1
        depth = call.kwargs.get("depth")
        if isinstance(depth, int) and not isinstance(depth, bool):
            node.repeat = depth
        node.reads = bind_ports(n.reads, entry, entry.inputs, "input", n.call.span, key_map, t)
        node.writes = bind_ports(n.writes, entry, entry.outputs, "output", n.call.span, key_map, t)
        if role == "source" and node.reads:
            t.report.error("E301", f"data source '{entry.name}' reads no keys", node.reads[0].span)
        self.program.nodes.append(node)

    def _loss_weight(self, n: ast.NodeDecl, env: Env, path: str) -> float | int:
        """A loss term's weight (1.0 unless given; a bad one is reported and taken as 1.0)."""
        wexpr = self.t.overrides.take(f"{path}.weight") or n.weight
        if wexpr is None:
            return 1.0
        try:
            weight = self.t.evaluator.eval(wexpr, env, symbols=False)
        except Fail:
            return 1.0
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            self.t.report.error("E205", f"a loss weight must be a number, not {describe(weight)}", wexpr.span)
            return 1.0
        return weight


class _Quiet:
    """A reporter that says nothing (a binding repeated only to read where each argument stands)."""

    def error(self, *args, **kwargs) -> None:
        pass


def bind_ports(refs: list[ast.KeyRef], entry: Entry, ports, direction: str, call_span: Span,
               key_map: KeyMap | None, t: Tools) -> list[Binding]:
    """A node's keys bound to the entry's `direction` ports (`binding.bind`), keys mapped."""
    if ports is None:  # an extension entry whose ports its source does not tell: bound unchecked
        return [Binding(map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in refs]
    if direction == "output" and any(p.name == "*" for p in ports):  # any keys, each its own port
        return [Binding(map_key(r.key, key_map), r.span, r.port or r.key, r.overwrite) for r in refs]
    key = (direction, entry.name)
    if key not in t.memo:
        slots = [Slot(p.name, True, not p.optional, p.variadic) for p in ports]
        t.memo[key] = slots, port_words(entry.name, direction, slots)
    slots, words = t.memo[key]
    bound = bind(refs, slots, words, t.report, _port)
    report_unbound(slots, (port for port, _ in bound), words, call_span, t.report)
    return [Binding(map_key(r.key, key_map), r.span, port, r.overwrite) for port, r in bound]


def _port(ref: ast.KeyRef) -> str | None:
    return ref.port


def map_key(key: str, key_map: KeyMap | None) -> str:
    """A key as written inside a template instance -> the program's key: a port's caller key, or
    the key namespaced by the instance's path."""
    if key_map is None:
        return key
    if key in key_map and key != "__prefix__":
        return key_map[key]
    return f"{key_map['__prefix__']}.{key}"

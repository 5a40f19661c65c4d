"""Resolve: AST + imports + overrides -> `ir.Program`.

Overrides replace expressions *before* anything is evaluated, so `dim=512` reaches every use of
`dim`. `let`s are evaluated lazily, once, in their own file's scope; templates (`def`) are
expanded into nested models with their internal keys namespaced by the instance name. Each
node is held against the registry: its name, its constructor's arguments and its ports.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from l3m import registry
from l3m.config import SECTION_SCHEMAS, section_fields
from l3m.dsl import ast
from l3m.dsl.diagnostics import Diagnostic, SourceCache, did_you_mean
from l3m.dsl.ext_locate import import_extension, search_roots
from l3m.dsl.ext_static import StaticEntry, read_extension
from l3m.dsl.ir import STAGES, Binding, Call, KeyDecl, ModelInfo, Node, Program, Section, Span
from l3m.dsl.limits import (
    INT_TOO_LARGE,
    MAX_BUILT,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_INSTANCE_DEPTH,
    MAX_INT_BITS,
    MAX_NODES,
    MAX_VALUE_SIZE,
    SECRET_WORDS,
    int_weight,
    measure,
    power_too_large,
    secret_word,
)
from l3m.dsl.parser import LANGUAGE_VERSION, ParseFailure, parse, parse_expr
from l3m.dsl.source import SourceRefused, read_source
from l3m.dsl.typecheck import Symbol, describe, mismatch

# Which registry kinds a node may name, by where it stands.
ROLE_KINDS = {"data": ("source", "generator"), "block": ("block",), "loss": ("loss",), "metric": ("metric",),
              "optimizer": ("optimizer",), "schedule": ("schedule",)}
_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)(:-([^}]*))?\}")


# Why an imported file is refused -> its code (the file given on the command line gets E002).
_REFUSED = {"suffix": "E410", "special": "E411", "size": "E412", "text": "E413"}
_REFUSED_HELP = {
    "suffix": "only .l3m files can be imported",
    "special": "import regular .l3m files; pipes, devices, sockets and directories are not read",
    "size": f"split the file; the limit is {MAX_FILE_BYTES // (1024 * 1024)} MiB",
    "text": ".l3m files are UTF-8 text",
}


_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
          "%": operator.mod, "**": operator.pow}


class _Fail(Exception):
    """Aborts evaluating one expression; its diagnostic is already recorded."""


@dataclass
class _Override:
    path: str
    expr: ast.Expr
    span: Span
    used: bool = False


@dataclass
class _ModuleScope:
    module: ast.Module
    file: str
    lets: dict[str, ast.LetDecl] = field(default_factory=dict)
    defs: dict[str, ast.DefDecl] = field(default_factory=dict)
    imports: dict[str, _ModuleScope] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    evaluating: set[str] = field(default_factory=set)
    used_imports: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # lets whose evaluation failed (and was reported)


@dataclass
class _Env:
    """Where names are looked up: a module's lets and imports, plus a template's parameters."""

    scope: _ModuleScope
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    program: Program | None
    diagnostics: list[Diagnostic]
    sources: SourceCache

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


class Resolver:
    def __init__(self, overrides: list[str] | tuple[str, ...] = (), extensions: tuple[str, ...] = (),
                 import_extensions: bool = False):
        self.diags: list[Diagnostic] = []
        self.sources = SourceCache()
        self.modules: dict[str, _ModuleScope] = {}
        self.chains: dict[str, tuple[str, ...]] = {}
        self.loading: list[str] = []
        self.context: list[tuple[str, Span]] = []
        self.override_texts = list(overrides)
        self.overrides: dict[str, _Override] = {}
        self.valid_paths: set[str] = set()
        self.cli_extensions = extensions
        # False: extension modules are read with `ast` (never run); True: imported (plan/train/eval/export).
        self.import_extensions = import_extensions
        self.static_entries: dict[str, StaticEntry] = {}
        self.static_reported: set[str] = set()
        self.program: Program | None = None
        self.index = 0
        self.paths: set[str] = set()  # node and model paths taken so far
        self.measures: dict[int, tuple[list, int, int]] = {}  # id -> (list, size, depth) of looked-up lists
        self.built = 0  # list elements and characters built so far (limits.MAX_BUILT)
        self.prefetching = False
        self.too_many_nodes = False

    # ------------------------------------------------------------------ diagnostics
    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              notes: list[tuple[str, Span | None]] | None = None) -> None:
        if span is not None and not span.chain and span.file in self.chains:
            span = replace(span, chain=self.chains[span.file])
        all_notes = [(f"in the instance of '{name}' at {where}", None) for name, where in reversed(self.context)]
        self.diags.append(Diagnostic(code, message, span, help, (notes or []) + all_notes))

    # ------------------------------------------------------------------ files
    def load(self, path: str, import_span: Span | None = None) -> _ModuleScope | None:
        real = os.path.realpath(path)
        if real in self.loading:
            cycle = " -> ".join(os.path.relpath(p) for p in self.loading[self.loading.index(real):] + [real])
            self.error("E402", f"import cycle: {cycle}", import_span)
            return None
        if real in self.modules:
            return self.modules[real]
        shown = _display(path)
        try:
            text = read_source(path)
        except FileNotFoundError:
            code = "E401" if import_span else "E002"
            self.error(code, f"cannot read '{path}': no such file", import_span)
            return None
        except SourceRefused as e:  # never parsed, so nothing of its contents can show in a message
            code = _REFUSED[e.kind] if import_span else "E002"
            self.error(code, f"cannot {'import' if import_span else 'read'} '{path}': it {e.reason}", import_span,
                       _REFUSED_HELP[e.kind] if import_span else None)
            return None
        except (OSError, ValueError) as e:
            code = "E401" if import_span else "E002"
            self.error(code, f"cannot read {e}" if isinstance(e, ValueError) else f"cannot read '{path}': {e.strerror or e}",
                       import_span)
            return None
        self.sources.add(shown, text)
        try:
            module = parse(text, shown)
        except ParseFailure as e:
            self.error(e.diagnostic.code, e.diagnostic.message, e.diagnostic.span, e.diagnostic.help)
            return None
        if module.version != LANGUAGE_VERSION:
            self.error("E003", f"this is l3m language version {LANGUAGE_VERSION}; the file asks for version "
                       f"{module.version}", module.version_span)
        scope = _ModuleScope(module, shown)
        self.modules[real] = scope
        self.loading.append(real)
        try:
            self._index_module(scope)
        finally:
            self.loading.pop()
        return scope

    def _index_module(self, scope: _ModuleScope) -> None:
        m = scope.module
        for let in m.lets:
            if let.name in scope.lets:
                self.error("E207", f"'{let.name}' is defined twice", let.span,
                           notes=[("first defined here", scope.lets[let.name].span)])
            scope.lets[let.name] = let
        for d in m.defs:
            if d.name in scope.defs:
                self.error("E207", f"template '{d.name}' is defined twice", d.span)
            scope.defs[d.name] = d
        base = os.path.dirname(scope.file)
        for imp in m.imports:
            target = os.path.normpath(os.path.join(base, imp.path))
            here = f"{imp.span}"
            self.chains.setdefault(_display(target), self.chains.get(scope.file, ()) + (here,))
            child = self.load(target, imp.span)
            if child is not None:
                if imp.alias in scope.imports:
                    self.error("E207", f"import name '{imp.alias}' is used twice", imp.alias_span)
                scope.imports[imp.alias] = child

    # ------------------------------------------------------------------ evaluation
    def eval(self, expr: ast.Expr, env: _Env, symbols: bool = True) -> Any:
        return self._eval(expr, env, symbols)[0]

    def _eval(self, root: ast.Expr, env: _Env, symbols: bool) -> tuple[Any, int, int]:
        """(value, size, depth), see `limits.measure`. Iterative: a 10,000-term sum is a tree
        10,000 deep. Sizes are known before a list or string is built, so limits hold by construction."""
        try:
            return self._eval_iter(root, env, symbols)
        except RecursionError:  # a last resort; nothing here should recurse deeply
            self.error("E004", "the expression nests too deeply", root.span)
            raise _Fail from None

    def _eval_iter(self, root: ast.Expr, env: _Env, symbols: bool) -> tuple[Any, int, int]:
        todo: list[tuple[ast.Expr, bool, bool]] = [(root, symbols, False)]
        out: list[tuple[Any, int, int]] = []
        while todo:
            e, sym, ready = todo.pop()
            if isinstance(e, ast.BinOp):
                if not ready:  # left is evaluated first, then right, then the operator
                    todo += [(e, sym, True), (e.right, False, False), (e.left, False, False)]
                    continue
                right = out.pop()
                out.append(self._binop(e, out.pop(), right))
            elif isinstance(e, ast.ListExpr):
                if not ready:
                    todo.append((e, sym, True))
                    todo += [(i, sym, False) for i in reversed(e.items)]
                    continue
                items = out[len(out) - len(e.items):]
                del out[len(out) - len(e.items):]
                size = max(1, sum(s for _, s, _ in items))
                depth = 1 + max((d for _, _, d in items), default=0)
                self._check_size(size, depth, e.span)
                self._charge(len(items), e.span)
                out.append(([v for v, _, _ in items], size, depth))
            elif isinstance(e, ast.Neg):
                if not ready:
                    todo += [(e, sym, True), (e.operand, False, False)]
                    continue
                v, size, depth = out.pop()
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    self.error("E404", f"cannot negate {describe(v)}", e.span)
                    raise _Fail
                out.append((-v, size, depth))
            elif isinstance(e, ast.Const):
                out.append(self._measured(e.value))
            elif isinstance(e, ast.Str):
                text = self._interpolate(e, env)
                self._check_size(len(text), 0, e.span)
                out.append((text, max(1, len(text)), 0))
            elif isinstance(e, ast.Ref):
                out.append(self._measured(self._lookup(e, env, sym)))
            else:
                raise AssertionError(f"unknown expression {type(e).__name__}")
        return out[0]

    def _measured(self, value: Any) -> tuple[Any, int, int]:
        """A value with its (size, depth); lists are measured once (the cache keeps them, so ids stay unique)."""
        if isinstance(value, list):
            hit = self.measures.get(id(value))
            if hit is None or hit[0] is not value:
                hit = (value, *measure(value))
                self.measures[id(value)] = hit
            return hit
        if isinstance(value, str):
            return value, max(1, len(value)), 0
        if isinstance(value, int) and not isinstance(value, bool):
            return value, int_weight(value), 0
        return value, 1, 0

    def _check_size(self, size: int, depth: int, span: Span) -> None:
        if depth > MAX_DEPTH:
            self.error("E004", f"this value nests lists deeper than {MAX_DEPTH} levels", span)
            raise _Fail
        if size > MAX_VALUE_SIZE:
            self.error("E430", f"this value would hold about {size:,} items; values are limited to "
                       f"{MAX_VALUE_SIZE:,} (list elements at every level, string characters)", span)
            raise _Fail

    def _charge(self, count: int, span: Span) -> None:
        """Count what the program builds in all, so that many steps of allowed size stay bounded too."""
        self.built += count
        if self.built > MAX_BUILT:
            self.error("E430", f"the program builds more than {MAX_BUILT:,} list elements and string "
                       "characters in all", span)
            raise _Fail

    def _binop(self, e: ast.BinOp, left: tuple[Any, int, int], right: tuple[Any, int, int]) -> tuple[Any, int, int]:
        (a, sa, da), (b, sb, db) = left, right
        num = (int, float)
        if e.op == "+" and isinstance(a, str) and isinstance(b, str):
            self._check_size(len(a) + len(b), 0, e.span)
            self._charge(len(a) + len(b), e.span)
            return self._measured(a + b)
        if e.op == "+" and isinstance(a, list) and isinstance(b, list):
            size, depth = max(1, (sa if a else 0) + (sb if b else 0)), max(da, db)
            self._check_size(size, depth, e.span)
            self._charge(len(a) + len(b), e.span)
            return a + b, size, depth
        if e.op == "*" and isinstance(a, list) and isinstance(b, int) and not isinstance(b, bool):
            n = max(b, 0)
            size, depth = max(1, (sa if a else 0) * n), (da if n and a else 1)
            self._check_size(size, depth, e.span)  # before `a * b` allocates anything
            self._charge(len(a) * n, e.span)
            return a * n, size, depth
        if not (isinstance(a, num) and isinstance(b, num)) or isinstance(a, bool) or isinstance(b, bool):
            self.error("E404", f"cannot apply '{e.op}' to {describe(a)} and {describe(b)}", e.span)
            raise _Fail
        if e.op == "**" and power_too_large(a, b):
            self.error("E430", f"the result would have about {int(b * math.log2(abs(a))):,} bits; {INT_TOO_LARGE}",
                       e.span)
            raise _Fail
        try:
            result = _ARITH[e.op](a, b)
        except ZeroDivisionError:
            self.error("E404", "division by zero", e.span)
            raise _Fail from None
        except OverflowError:
            self.error("E404", "the result is too large for a number", e.span)
            raise _Fail from None
        if isinstance(result, complex):
            self.error("E404", "the result is not a real number", e.span)
            raise _Fail
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            self.error("E430", f"the result has {result.bit_length():,} bits; {INT_TOO_LARGE}", e.span)
            raise _Fail
        return self._measured(result)

    def _lookup(self, ref: ast.Ref, env: _Env, symbols: bool) -> Any:
        parts = ref.parts
        if len(parts) == 1 and parts[0] in env.params:
            return env.params[parts[0]]
        scope = env.scope
        name = parts[-1]
        if len(parts) == 2 and parts[0] in scope.imports:
            scope.used_imports.add(parts[0])
            scope = scope.imports[parts[0]]
        elif len(parts) > 1:
            self.error("E403", f"'{ref.dotted}' is not defined: '{parts[0]}' is not an imported namespace", ref.span,
                       did_you_mean(parts[0], scope.imports))
            raise _Fail
        if name in scope.lets:
            return self._let_value(scope, name)
        if len(parts) == 1 and symbols:
            return Symbol(name)
        visible = list(scope.lets) + list(env.params)
        self.error("E403", f"'{ref.dotted}' is not defined", ref.span, did_you_mean(name, visible))
        raise _Fail

    def _let_value(self, scope: _ModuleScope, name: str) -> Any:
        if name in scope.values:
            return scope.values[name]
        if name in scope.failed:  # already reported
            raise _Fail
        let = scope.lets[name]
        if name in scope.evaluating:
            self.error("E404", f"'{name}' depends on itself", let.span)
            raise _Fail
        if not self.prefetching:
            self._prefetch(scope, name)
            if name in scope.values:
                return scope.values[name]
            raise _Fail
        scope.evaluating.add(name)
        try:
            expr = let.value
            ov = self.overrides.get(name) if scope is self.main else None
            if ov is not None:
                ov.used = True
                expr = ov.expr
            value, size, depth = self._eval(expr, _Env(self.main if ov else scope), True)
        except _Fail:
            scope.failed.add(name)
            raise
        finally:
            scope.evaluating.discard(name)
        scope.values[name] = value
        if isinstance(value, list):
            self.measures[id(value)] = (value, size, depth)
        return value

    def _let_deps(self, scope: _ModuleScope, name: str) -> list[tuple[_ModuleScope, str]]:
        """The lets that a let's expression (or its override) names, found without evaluating it."""
        expr, where = scope.lets[name].value, scope
        ov = self.overrides.get(name) if scope is self.main else None
        if ov is not None:
            expr, where = ov.expr, self.main
        deps = []
        for e in _walk(expr):
            if isinstance(e, ast.Ref):
                names = [e.parts]
            elif isinstance(e, ast.Str):
                names = [m.group(1).split(".") for m in _INTERP.finditer(e.raw)]
            else:
                continue
            for parts in names:
                if len(parts) == 1 and parts[0] in where.lets:
                    deps.append((where, parts[0]))
                elif len(parts) == 2 and parts[0] in where.imports and parts[1] in where.imports[parts[0]].lets:
                    deps.append((where.imports[parts[0]], parts[1]))
        return deps

    def _prefetch(self, scope: _ModuleScope, name: str) -> None:
        """Evaluate the lets that `name` needs, deepest first, so that a chain of 10,000 lets written
        in reverse order never recurses. A cycle is reported where it closes."""
        self.prefetching = True
        try:
            order: list[tuple[_ModuleScope, str]] = []
            state: dict[tuple[int, str], int] = {(id(scope), name): 1}  # 1: on the path, 2: finished
            path = [(scope, name)]
            stack = [((scope, name), iter(self._let_deps(scope, name)))]
            while stack:
                node, deps = stack[-1]
                for s, n in deps:
                    key = (id(s), n)
                    if n in s.values or n in s.failed or state.get(key) == 2:
                        continue
                    if state.get(key) == 1:
                        i = next(j for j, (ps, pn) in enumerate(path) if ps is s and pn == n)
                        for ps, pn in path[i:]:
                            ps.failed.add(pn)
                        self.error("E404", f"'{n}' depends on itself", s.lets[n].span)
                        continue
                    state[key] = 1
                    path.append((s, n))
                    stack.append(((s, n), iter(self._let_deps(s, n))))
                    break
                else:
                    stack.pop()
                    path.pop()
                    state[(id(node[0]), node[1])] = 2
                    order.append(node)
            for s, n in order:
                if n not in s.values and n not in s.failed:
                    with contextlib.suppress(_Fail):
                        self._let_value(s, n)
        finally:
            self.prefetching = False

    def _interpolate(self, s: ast.Str, env: _Env) -> str:
        quoted = s.span.line == s.span.end_line and s.span.end_col - s.span.col == len(s.raw) + 2

        def where(m: re.Match) -> Span:
            col = s.span.col + int(quoted) + m.start()
            return Span(s.span.file, s.span.line, col, s.span.line, col + len(m.group(0)), s.span.chain)

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(3)
            parts = name.split(".")
            if len(parts) == 1 and (parts[0] in env.params or parts[0] in env.scope.lets) or (
                    len(parts) == 2 and parts[0] in env.scope.imports):
                value = self._lookup(ast.Ref(s.span, parts), env, False)
                return str(value)
            word = secret_word(name)
            if word is not None:  # refused whether or not it is set: its value must reach no record
                self.error("E420", f"'${{{name}}}' looks like a credential (its name contains '{word}'); "
                           "environment variables holding secrets are not read into programs", where(m),
                           f"names containing {', '.join(SECRET_WORDS)} are refused; pass credentials to the "
                           "tools that need them through their own environment (e.g. WANDB_API_KEY)")
                raise _Fail
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            self.error("E403", f"'${{{name}}}' is neither a let nor a set environment variable", where(m),
                       f"give a default: \"${{{name}:-value}}\"")
            raise _Fail

        text = _INTERP.sub(sub, s.raw)
        self._charge(len(text), s.span)
        return text

    # ------------------------------------------------------------------ overrides
    def _parse_overrides(self) -> None:
        for i, text in enumerate(self.override_texts):
            file = f"<override {i + 1}>"
            self.sources.add(file, text)
            path, eq, value = text.partition("=")
            path = path.strip()
            whole = Span(file, 1, 1, 1, len(text) + 1)
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", path):
                self.error("E501", f"malformed override '{text}'; write PATH=VALUE, e.g. train.steps=100", whole)
                continue
            vcol = len(text) - len(value.lstrip()) + 1
            try:
                expr = parse_expr(value.strip() or '""', file)
            except ParseFailure as e:
                if e.diagnostic.code == "E430":  # a huge number is refused, not read as a string
                    span = e.diagnostic.span
                    self.error("E430", e.diagnostic.message, span and _shift_span(span, vcol - 1))
                    continue
                expr = ast.Str(Span(file, 1, 1, 1, len(value.strip()) + 1), value.strip().replace("\\", "\\\\"))
            expr = _shift(expr, vcol - 1)
            if path in self.overrides:
                self.error("E501", f"'{path}' is overridden twice", whole)
            self.overrides[path] = _Override(path, expr, Span(file, 1, 1, 1, len(path) + 1))

    def _override(self, path: str) -> ast.Expr | None:
        self.valid_paths.add(path)
        ov = self.overrides.get(path)
        if ov is None:
            return None
        ov.used = True
        return ov.expr

    def _report_unused_overrides(self) -> None:
        for ov in self.overrides.values():
            if not ov.used:
                self.error("E501", f"override '{ov.path}' names nothing in the program", ov.span,
                           did_you_mean(ov.path, self.valid_paths))

    # ------------------------------------------------------------------ the program
    def resolve(self, path: str) -> Result:
        self.path = path
        self._parse_overrides()
        scope = self.load(path)
        if scope is None:
            return Result(None, self.diags, self.sources)
        self.main = scope
        prog = Program(file=scope.file, overrides=list(self.override_texts))
        self.program = prog
        prog.imports = [s.file for s in self.modules.values() if s is not scope]
        mod = scope.module
        env = _Env(scope)
        self.valid_paths.update(scope.lets)
        self._extensions(mod, prog)
        for name in scope.lets:  # evaluate every let, so errors show even in unused ones
            with contextlib.suppress(_Fail):
                prog.lets[name] = self._let_value(scope, name)
        for k in mod.keys:
            if k.name in prog.keys:
                self.error("E207", f"key '{k.name}' is declared twice", k.span)
            prog.keys[k.name] = KeyDecl(k.name, k.dtype, k.shape, k.span)
        for n in mod.data:
            self._node(n, env, "data", path=f"data.{n.name}")
        if len(mod.models) > 1:
            self.error("E603", "a file declares one model; nest the others inside it", mod.models[1].span)
        for m in mod.models[:1]:
            self._model_item(m, env, parent=None, key_map=None, override_prefix="model")
        for n in mod.losses:
            self._node(n, env, "loss", path=f"loss.{n.name}")
        for n in mod.metrics:
            self._node(n, env, "metric", path=f"metric.{n.name}")
        for kind in ("optimizer", "schedule"):
            calls = getattr(mod, kind)
            for extra in calls[1:]:
                self.error("E603", f"'{kind}' is declared twice", extra.span)
            if calls:
                setattr(prog, kind, self._call(calls[0], env, kind, ROLE_KINDS[kind], f"{kind}"))
        self._sections(mod, env, prog)
        self._report_unused_overrides()
        for alias in scope.imports:
            if alias not in scope.used_imports:
                imp = next(i for i in mod.imports if i.alias == alias)
                self.error("W103", f"import '{alias}' is never used", imp.alias_span)
        return Result(prog, self.diags, self.sources)

    def _extensions(self, mod: ast.Module, prog: Program) -> None:
        wanted = [(e.module, e.span) for e in mod.extensions] + [(m, None) for m in self.cli_extensions]
        for module, span in wanted:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module):
                self.error("E405", f"'{module}' is not a Python module name", span)
                continue
            if not self.import_extensions:
                self._read_extension(module, span, prog)
                continue
            try:
                import_extension(module, search_roots(self.path))
            except Exception as e:  # an extension's own failure, reported rather than raised
                self.error("E405", f"extension '{module}' could not be imported: {type(e).__name__}: {e}", span)
                continue
            prog.extensions.append((module, span))
            self.error("N001", f"loads extension module '{module}'", span)

    def _read_extension(self, module: str, span: Span | None, prog: Program) -> None:
        """Take an extension's entries from its source: checking a file never runs project code."""
        ext = read_extension(module, search_roots(self.path))
        if ext.error:
            self.error("E405", f"extension '{module}' cannot be read, so it would not import: {ext.error}", span)
            return
        for text in ext.warnings:
            self.error("W104", f"extension '{module}': {text}", span)
        self.static_entries.update(ext.entries)
        prog.extensions.append((module, span))
        self.error("N001", f"reads extension module '{module}' without importing it "
                   f"({len(ext.entries)} entr{'y' if len(ext.entries) == 1 else 'ies'})", span)

    def _entry(self, name: str) -> registry.Entry | StaticEntry | None:
        """A registered name: extension entries read from source first, then the registry."""
        return self.static_entries.get(name) or registry.lookup(name)

    def _names(self, kind: str) -> list[str]:
        return registry.names(kind) + [n for n, e in self.static_entries.items() if e.kind == kind]

    def _report_skipped(self, entry: registry.Entry | StaticEntry, span: Span) -> None:
        """Once per extension entry: which checks its source could not support (W104)."""
        if isinstance(entry, StaticEntry) and entry.skipped and entry.name not in self.static_reported:
            self.static_reported.add(entry.name)
            for text in entry.skipped:
                self.error("W104", text, span)

    def _sections(self, mod: ast.Module, env: _Env, prog: Program) -> None:
        seen: dict[str, ast.SectionDecl] = {}
        for sec in mod.sections:
            if sec.name in seen:
                self.error("E603", f"section '{sec.name}' appears twice", sec.span)
                continue
            seen[sec.name] = sec
        for name in SECTION_SCHEMAS:
            sec = seen.get(name)
            out = Section(name, sec.span if sec else None)
            fields_ = section_fields(name)
            self.valid_paths.update(f"{name}.{f}" for f in fields_)
            given: dict[str, tuple[ast.Expr, Span]] = {}
            for s in sec.settings if sec else []:
                if s.name in given:
                    self.error("E207", f"'{name}.{s.name}' is set twice", s.span)
                given[s.name] = (s.value, s.span)
            for f in fields_:
                ov = self._override(f"{name}.{f}")
                if ov is not None:
                    given[f] = (ov, ov.span)
            for key, (expr, span) in given.items():
                if key not in fields_:
                    self.error("E602", f"'{name}' has no setting '{key}'", span, did_you_mean(key, fields_))
                    continue
                try:
                    value = self.eval(expr, env)
                except _Fail:
                    continue
                wrong = mismatch(value, fields_[key])
                if wrong:
                    self.error("E602", f"'{name}.{key}' must be {wrong}, not {describe(value)}", expr.span,
                               did_you_mean(value, _literal_options(fields_[key])) if isinstance(value, str) else None)
                    continue
                out.values[key] = value
                out.spans[key] = expr.span
            prog.sections[name] = out

    # ------------------------------------------------------------------ models
    def _model_item(self, item: ast.ModelDecl | ast.ModelInst, env: _Env, parent: str | None,
                    key_map: dict[str, str] | None, override_prefix: str) -> None:
        path = f"{parent}.{item.name}" if parent else item.name
        prog = self.program
        if path in self.paths:
            self.error("E207", f"model '{path}' is declared twice", item.span)
            return
        self.paths.add(path)
        if isinstance(item, ast.ModelInst):
            self._instance(item, env, parent, key_map, override_prefix)
            return
        prog.models.append(ModelInfo(path, item.name, item.span, parent))
        self._model_body(item, env, path, key_map, override_prefix)

    def _model_body(self, body: ast.ModelDecl, env: _Env, path: str, key_map: dict[str, str] | None,
                    override_prefix: str) -> None:
        seen_stages: dict[str, Span] = {}
        for entry in body.order:
            if isinstance(entry, ast.StageDecl):
                if entry.name in seen_stages:
                    self.error("E207", f"stage '{entry.name}' appears twice in model '{path}'", entry.span,
                               notes=[("first here", seen_stages[entry.name])])
                seen_stages[entry.name] = entry.span
                for n in entry.nodes:
                    self._node(n, env, "block", path=f"{path}.{entry.name}.{n.name}", model=path, stage=entry.name,
                               key_map=key_map, override_path=f"{override_prefix}.{entry.name}.{n.name}")
            else:
                sub_prefix = f"{override_prefix}.{entry.name}"
                self._model_item(entry, env, path, key_map, sub_prefix)

    def _instance(self, inst: ast.ModelInst, env: _Env, parent: str | None, key_map: dict[str, str] | None,
                  override_prefix: str) -> None:
        path = f"{parent}.{inst.name}" if parent else inst.name
        if len(self.context) >= MAX_INSTANCE_DEPTH:
            self.error("E004", f"templates instantiate templates more than {MAX_INSTANCE_DEPTH} levels deep",
                       inst.span, "does a template instantiate itself?")
            return
        if len(self.program.nodes) > MAX_NODES:
            if not self.too_many_nodes:  # said once; the remaining instances are skipped
                self.error("E430", f"expanding templates makes more than {MAX_NODES:,} nodes", inst.span)
            self.too_many_nodes = True
            return
        d, def_scope = self._find_def(inst.call, env)
        if d is None:
            return
        params: dict[str, Any] = {}
        param_names = [p.name for p in d.params]
        given: dict[str, tuple[ast.Expr, Span, _Env]] = {}
        positional = [a for a in inst.call.args if a.name is None]
        if len(positional) > len(d.params):
            self.error("E206", f"template '{d.name}' takes {len(d.params)} arguments, {len(positional)} given",
                       positional[len(d.params)].span)
        for p, a in zip(d.params, positional):
            given[p.name] = (a.value, a.span, env)
        for a in inst.call.args:
            if a.name is None:
                continue
            if a.name not in param_names:
                self.error("E203", f"template '{d.name}' has no parameter '{a.name}'", a.span,
                           did_you_mean(a.name, param_names))
                continue
            if a.name in given:
                self.error("E207", f"argument '{a.name}' is given twice", a.span)
            given[a.name] = (a.value, a.span, env)
        inner_env = _Env(def_scope, params)
        for p in d.params:
            ov = self._override(f"{override_prefix}.{p.name}")
            if ov is not None:
                given[p.name] = (ov, ov.span, _Env(self.main))
            try:
                if p.name in given:
                    expr, _span, e = given[p.name]
                    params[p.name] = self.eval(expr, e)
                elif p.default is not None:
                    params[p.name] = self.eval(p.default, inner_env)
                else:
                    self.error("E204", f"template '{d.name}' needs the argument '{p.name}'", inst.call.span)
                    params[p.name] = None
            except _Fail:
                params[p.name] = None
        # The instance's ports -> the caller's keys; everything else stays inside the instance.
        new_map: dict[str, str] = {}
        outer = key_map or {}
        for ports, bound, direction in ((d.inputs, inst.reads, "input"), (d.outputs, inst.writes, "output")):
            names = [n for n, _ in ports]
            pos = [b for b in bound if b.port is None]
            if len(pos) > len(names):
                self.error("E301", f"template '{d.name}' has {len(names)} {direction} ports, {len(pos)} keys bound",
                           pos[len(names)].span)
            for (pname, _), b in zip(ports, pos):
                new_map[pname] = outer.get(b.key, b.key)
            for b in bound:
                if b.port is None:
                    continue
                if b.port not in names:
                    self.error("E301", f"template '{d.name}' has no {direction} port '{b.port}'", b.span,
                               did_you_mean(b.port, names))
                    continue
                new_map[b.port] = outer.get(b.key, b.key)
            for pname, _ in ports:
                if pname not in new_map:
                    self.error("E302", f"{direction} port '{pname}' of template '{d.name}' is not bound", inst.span)
        new_map["__prefix__"] = path
        self.program.models.append(ModelInfo(path, inst.name, inst.span, parent))
        self.context.append((d.name, inst.span))
        try:
            self._model_body(d.body, inner_env, path, new_map, override_prefix)
        finally:
            self.context.pop()

    def _find_def(self, call: ast.CallExpr, env: _Env) -> tuple[ast.DefDecl | None, _ModuleScope | None]:
        scope = env.scope
        if len(call.parts) == 2 and call.parts[0] in scope.imports:
            scope.used_imports.add(call.parts[0])
            scope = scope.imports[call.parts[0]]
        elif len(call.parts) != 1:
            self.error("E201", f"'{call.dotted}' is not a template: '{call.parts[0]}' is not an imported namespace",
                       call.span, did_you_mean(call.parts[0], scope.imports))
            return None, None
        name = call.parts[-1]
        if name in scope.defs:
            return scope.defs[name], scope
        entry = self._entry(name)
        if entry is not None:
            self.error("E202", f"'{name}' is {registry.KIND_PHRASE[entry.kind]}, not a template; "
                       "put blocks inside a stage", call.span)
        else:
            self.error("E201", f"no template named '{call.dotted}'", call.span, did_you_mean(name, scope.defs))
        return None, None

    # ------------------------------------------------------------------ nodes
    def _node(self, n: ast.NodeDecl, env: _Env, where: str, path: str, model: str = "", stage: str | None = None,
              key_map: dict[str, str] | None = None, override_path: str | None = None) -> None:
        prog = self.program
        override_path = override_path or path
        if path in self.paths:
            self.error("E207", f"'{n.name}' is declared twice here", n.span)
            return
        self.paths.add(path)
        call = self._call(n.call, env, where, ROLE_KINDS[where], override_path)
        if call is None:  # keep its keys in the dataflow, so one bad name does not cascade
            role = {"data": "generator" if n.reads else "source"}.get(where, where)
            stub = Node(n.name, path, role, Call(n.call.dotted, n.call.span), n.span, self.index, model, stage,
                        valid=False)
            stub.reads = [Binding(self._map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in n.reads]
            stub.writes = [Binding(self._map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in n.writes]
            self.index += 1
            prog.nodes.append(stub)
            return
        entry = self._entry(call.type_name)
        role = entry.kind if where == "data" else where
        weight = 1.0
        if where == "loss":
            wexpr = self._override(f"{override_path}.weight") or n.weight
            if wexpr is not None:
                try:
                    weight = self.eval(wexpr, env, symbols=False)
                    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                        self.error("E205", f"a loss weight must be a number, not {describe(weight)}", wexpr.span)
                        weight = 1.0
                except _Fail:
                    pass
        node = Node(name=n.name, path=path, role=role, call=call, span=n.span, index=self.index, model=model,
                    stage=stage, weight=float(weight))
        self.index += 1
        depth = call.kwargs.get("depth")
        if isinstance(depth, int) and not isinstance(depth, bool):
            node.repeat = depth
        node.reads = self._bind(n.reads, entry, entry.inputs, "input", n.call.span, key_map)
        node.writes = self._bind(n.writes, entry, entry.outputs, "output", n.call.span, key_map)
        if role == "source" and node.reads:
            self.error("E301", f"data source '{entry.name}' reads no keys", node.reads[0].span)
        prog.nodes.append(node)

    def _bind(self, refs: list[ast.KeyRef], entry: registry.Entry | StaticEntry, ports, direction: str,
              call_span: Span, key_map: dict[str, str] | None) -> list[Binding]:
        if ports is None:  # an extension entry whose ports its source does not tell: bound unchecked
            return [Binding(self._map_key(r.key, key_map), r.span, r.port, r.overwrite) for r in refs]
        out: list[Binding] = []
        if direction == "output" and any(p.name == "*" for p in ports):  # any keys, each its own port
            return [Binding(self._map_key(r.key, key_map), r.span, r.port or r.key, r.overwrite) for r in refs]
        names = [p.name for p in ports]
        variadic = next((p for p in ports if p.variadic), None)
        fixed = [p for p in ports if not p.variadic]
        pos = [r for r in refs if r.port is None]
        named = [r for r in refs if r.port is not None]
        for i, r in enumerate(pos):
            if i < len(fixed):
                port = fixed[i].name
            elif variadic is not None:
                port = variadic.name
            else:
                self.error("E301", f"'{entry.name}' has {len(fixed)} {direction} port{'s' * (len(fixed) != 1)} "
                           f"({', '.join(names) or 'none'}); this key has no port to bind to", r.span)
                continue
            out.append(Binding(self._map_key(r.key, key_map), r.span, port, r.overwrite))
        for r in named:
            if r.port not in names:
                self.error("E301", f"'{entry.name}' has no {direction} port '{r.port}'", r.span,
                           did_you_mean(r.port, names) or f"its {direction} ports are: {', '.join(names) or 'none'}")
                continue
            if any(b.port == r.port for b in out) and not (variadic and r.port == variadic.name):
                self.error("E207", f"{direction} port '{r.port}' is bound twice", r.span)
                continue
            out.append(Binding(self._map_key(r.key, key_map), r.span, r.port, r.overwrite))
        bound = {b.port for b in out}
        for p in ports:
            if not p.optional and p.name not in bound:
                self.error("E302", f"{direction} port '{p.name}' of '{entry.name}' is not bound", call_span,
                           f"'{entry.name}' {'reads' if direction == 'input' else 'writes'}: "
                           + ", ".join(q.name + ("?" if q.optional else "") for q in ports))
        return out

    @staticmethod
    def _map_key(key: str, key_map: dict[str, str] | None) -> str:
        if key_map is None:
            return key
        if key in key_map and key != "__prefix__":
            return key_map[key]
        return f"{key_map['__prefix__']}.{key}"

    def _call(self, c: ast.CallExpr, env: _Env, where: str, kinds: tuple[str, ...], override_path: str) -> Call | None:
        name = c.dotted
        entry = self._entry(name) if len(c.parts) == 1 else None
        if entry is None:
            if len(c.parts) > 1 or name in env.scope.defs:
                self.error("E202", f"'{name}' is a template; instantiate it with `model NAME = {name}(...) ins -> outs`",
                           c.span)
                return None
            pool = [n for k in kinds for n in self._names(k)]
            phrase = " or ".join(registry.KIND_PHRASE[k].split(" ", 1)[1] for k in kinds)
            self.error("E201", f"unknown {phrase} '{name}'", c.span,
                       did_you_mean(name, pool) or f"run `l3m blocks` to list {phrase}s")
            return None
        if entry.kind not in kinds:
            phrase = " or ".join(registry.KIND_PHRASE[k] for k in kinds)
            self.error("E202", f"'{name}' is {registry.KIND_PHRASE[entry.kind]}, but {phrase} is expected here", c.span)
            return None
        self._report_skipped(entry, c.span)
        params = list(entry.signature.parameters.values())[registry.RUNTIME_PARAMS.get(entry.kind, 0):]
        by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params)
        positional_ok = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        call = Call(name, c.span)
        values: dict[str, tuple[Any, Span]] = {}
        pos_args = [a for a in c.args if a.name is None]
        if len(pos_args) > len(positional_ok):
            self.error("E206", f"'{name}' takes {len(positional_ok)} positional argument"
                       f"{'s' * (len(positional_ok) != 1)}, {len(pos_args)} given", pos_args[len(positional_ok)].span)
        pairs: list[tuple[str, ast.Expr, Span]] = []
        for p, a in zip(positional_ok, pos_args):
            pairs.append((p.name, a.value, a.span))
        for a in c.args:
            if a.name is None:
                continue
            if a.name not in by_name and not accepts_any:
                self.error("E203", f"'{name}' has no argument '{a.name}'", a.span,
                           did_you_mean(a.name, by_name) or f"its arguments are: {', '.join(by_name) or 'none'}")
                continue
            if any(n == a.name for n, _, _ in pairs):
                self.error("E207", f"argument '{a.name}' is given twice", a.span)
                continue
            pairs.append((a.name, a.value, a.span))
        for pname in by_name:
            self.valid_paths.add(f"{override_path}.{pname}")
        overridden = set()
        for pname in by_name:
            ov = self._override(f"{override_path}.{pname}")
            if ov is not None:
                pairs = [(n, e, s) for n, e, s in pairs if n != pname] + [(pname, ov, ov.span)]
                overridden.add(pname)
        hints = entry.type_hints
        for pname, expr, span in pairs:
            value_env = _Env(self.main) if pname in overridden else env
            try:
                value = self.eval(expr, value_env)
            except _Fail:
                values[pname] = (None, span)
                continue
            ann = hints.get(pname, by_name[pname].annotation if pname in by_name else None)
            wrong = mismatch(value, ann) if ann is not None else None
            if wrong:
                if isinstance(value, Symbol) and "string" not in wrong and "'" not in wrong:
                    visible = list(env.scope.lets) + list(env.params)
                    self.error("E403", f"'{value}' is not defined", expr.span, did_you_mean(value, visible))
                else:
                    opts = _literal_options(ann)
                    self.error("E205", f"argument '{pname}' of '{name}' must be {wrong}, not {describe(value)}",
                               expr.span, did_you_mean(value, opts) if isinstance(value, str) and opts else None)
            values[pname] = (_plain(value), span)
        for p in params:
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in values:
                self.error("E204", f"'{name}' needs the argument '{p.name}'", c.span)
        for pname, (value, span) in values.items():
            call.kwargs[pname] = value
            call.kwarg_spans[pname] = span
        return call


def _display(path: str) -> str:
    """How a file is named in messages: relative to the working directory when it lies below it."""
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    return absolute if rel.startswith("..") else rel


def _plain(value: Any) -> Any:
    """Symbols become ordinary strings once they have been type-checked."""
    if isinstance(value, Symbol):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _literal_options(ann: Any) -> list[str]:
    import typing

    if typing.get_origin(ann) is typing.Literal:
        return [a for a in typing.get_args(ann) if isinstance(a, str)]
    out: list[str] = []
    for a in typing.get_args(ann):
        out += _literal_options(a)
    return out


def _shift(expr: ast.Expr, cols: int) -> ast.Expr:
    """Move an override value's spans to where the value stands in `PATH=VALUE`."""
    if cols == 0:
        return expr
    for obj in _walk(expr):
        s = obj.span
        obj.span = Span(s.file, s.line, s.col + cols, s.end_line, s.end_col + cols)
    return expr


def _shift_span(s: Span, cols: int) -> Span:
    return Span(s.file, s.line, s.col + cols, s.end_line, s.end_col + cols)


def _walk(expr: ast.Expr):
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, ast.ListExpr):
            stack.extend(e.items)
        elif isinstance(e, ast.BinOp):
            stack.extend((e.left, e.right))
        elif isinstance(e, ast.Neg):
            stack.append(e.operand)


def resolve(path: str, overrides: list[str] | tuple[str, ...] = (), extensions: tuple[str, ...] = (),
            import_extensions: bool = False) -> Result:
    resolver = Resolver(overrides, extensions, import_extensions)
    try:
        return resolver.resolve(path)
    except RecursionError:  # a last resort: what input can make deep is walked without recursion
        resolver.error("E004", "the program nests too deeply to compile", None)
        return Result(None, resolver.diags, resolver.sources)


__all__ = ["Result", "resolve", "read_source", "STAGES"]

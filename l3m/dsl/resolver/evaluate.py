"""Expressions -> values: lets (lazily, once, in their own file's scope), arithmetic, `${...}`
interpolation, and the limits that keep any value and the whole program's building bounded."""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
from dataclasses import dataclass, field
from typing import Any

from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Span
from l3m.dsl.limits import (
    INT_TOO_LARGE,
    MAX_BUILT,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_VALUE_SIZE,
    SECRET_WORDS,
    int_weight,
    measure,
    power_too_large,
    secret_word,
)
from l3m.dsl.resolver.context import Fail, Reporter
from l3m.dsl.resolver.modules import ModuleScope
from l3m.dsl.resolver.overrides import Overrides, walk
from l3m.dsl.typecheck import Symbol, describe

INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)(:-([^}]*))?\}")

_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
          "%": operator.mod, "**": operator.pow}

Measured = tuple[Any, int, int]  # (value, size, depth), see `limits.measure`


@dataclass
class Env:
    """Where names are looked up: a module's lets and imports, plus a template's parameters."""

    scope: ModuleScope
    params: dict[str, Any] = field(default_factory=dict)
    # Where each template parameter's value was written: the instance's argument, or the default (`--why`).
    param_spans: dict[str, Span] = field(default_factory=dict)


@dataclass(eq=False)
class PendingCall:
    """A component written as a value (`Rope2d(base = 100)`), not yet resolved: which entries it may
    name, and which arguments it may leave out, depend on the parameter it is given to (its interface),
    so `calls.resolve_call` resolves it there, in the scope it was written in (`env`)."""

    expr: ast.CallExpr
    env: Env

    is_component = True

    @property
    def type_name(self) -> str:
        return self.expr.dotted

    def __str__(self) -> str:
        return ast.source_text(self.expr)


class Evaluator:
    """Evaluates expressions. Overrides of lets apply to the main file's lets only, and are
    evaluated in the main file's scope (where the command line stands)."""

    def __init__(self, report: Reporter, overrides: Overrides, main: ModuleScope):
        self.report = report
        self.overrides = overrides
        self.main = main
        self.measures: dict[int, Measured] = {}  # id -> (list, size, depth) of looked-up lists
        self.built = 0  # list elements and characters built so far (limits.MAX_BUILT)
        self.prefetching = False

    def fail(self, code: str, message: str, span: Span | None, help: str | None = None) -> Fail:
        """Report, and return the exception that abandons the expression."""
        self.report.error(code, message, span, help)
        return Fail()

    # ------------------------------------------------------------------ expressions
    def eval(self, expr: ast.Expr, env: Env, symbols: bool = True) -> Any:
        """The value of `expr`; raises `Fail` (already reported) when it has none. With `symbols`,
        an unknown bare name is a `Symbol` (typecheck decides whether a string was meant)."""
        return self.measured_eval(expr, env, symbols)[0]

    def measured_eval(self, root: ast.Expr, env: Env, symbols: bool) -> Measured:
        """(value, size, depth). Iterative: a 10,000-term sum is a tree 10,000 deep. Sizes are
        known before a list or string is built, so limits hold by construction."""
        try:
            return self._eval_iter(root, env, symbols)
        except RecursionError:  # a last resort; nothing here should recurse deeply
            raise self.fail("E004", "the expression nests too deeply", root.span) from None

    def _eval_iter(self, root: ast.Expr, env: Env, symbols: bool) -> Measured:
        todo: list[tuple[ast.Expr, bool, bool]] = [(root, symbols, False)]
        out: list[Measured] = []
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
                    raise self.fail("E404", f"cannot negate {describe(v)}", e.span)
                out.append((-v, size, depth))
            elif isinstance(e, ast.Const):
                out.append(self._measured(e.value))
            elif isinstance(e, ast.Str):
                text = self._interpolate(e, env)
                self._check_size(len(text), 0, e.span)
                out.append((text, max(1, len(text)), 0))
            elif isinstance(e, ast.Ref):
                out.append(self._measured(self.lookup(e, env, sym)))
            elif isinstance(e, ast.CallExpr):
                out.append((PendingCall(e, env), 1, 0))
            else:
                raise AssertionError(f"unknown expression {type(e).__name__}")
        return out[0]

    def _measured(self, value: Any) -> Measured:
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
            raise self.fail("E004", f"this value nests lists deeper than {MAX_DEPTH} levels", span)
        if size > MAX_VALUE_SIZE:
            raise self.fail("E430", f"this value would hold about {size:,} items; values are limited to "
                            f"{MAX_VALUE_SIZE:,} (list elements at every level, string characters)", span)

    def _charge(self, count: int, span: Span) -> None:
        """Count what the program builds in all, so that many steps of allowed size stay bounded too."""
        self.built += count
        if self.built > MAX_BUILT:
            raise self.fail("E430", f"the program builds more than {MAX_BUILT:,} list elements and string "
                            "characters in all", span)

    def _binop(self, e: ast.BinOp, left: Measured, right: Measured) -> Measured:
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
            raise self.fail("E404", f"cannot apply '{e.op}' to {describe(a)} and {describe(b)}", e.span)
        if e.op == "**" and power_too_large(a, b):
            raise self.fail("E430", f"the result would have about {int(b * math.log2(abs(a))):,} bits; "
                            f"{INT_TOO_LARGE}", e.span)
        try:
            result = _ARITH[e.op](a, b)
        except ZeroDivisionError:
            raise self.fail("E404", "division by zero", e.span) from None
        except OverflowError:
            raise self.fail("E404", "the result is too large for a number", e.span) from None
        if isinstance(result, complex):
            raise self.fail("E404", "the result is not a real number", e.span)
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise self.fail("E430", f"the result has {result.bit_length():,} bits; {INT_TOO_LARGE}", e.span)
        return self._measured(result)

    # ------------------------------------------------------------------ names
    def lookup(self, ref: ast.Ref, env: Env, symbols: bool) -> Any:
        """A name's value: a template parameter, a let (here or in an imported namespace), or a Symbol."""
        parts = ref.parts
        if len(parts) == 1 and parts[0] in env.params:
            return env.params[parts[0]]
        scope = env.scope
        name = parts[-1]
        if len(parts) == 2 and parts[0] in scope.imports:
            scope.used_imports.add(parts[0])
            scope = scope.imports[parts[0]]
        elif len(parts) > 1 and parts[0] in scope.broken_imports:
            raise Fail  # the import's own error says it
        elif len(parts) > 1:
            raise self.fail("E403", f"'{ref.dotted}' is not defined: '{parts[0]}' is not an imported namespace",
                            ref.span, did_you_mean(parts[0], scope.imports))
        if name in scope.lets:
            return self.let_value(scope, name)
        if len(parts) == 1 and symbols:
            return Symbol(name)
        visible = list(scope.lets) + list(env.params)
        raise self.fail("E403", f"'{ref.dotted}' is not defined", ref.span, did_you_mean(name, visible))

    def let_value(self, scope: ModuleScope, name: str) -> Any:
        """A let's value, evaluated once (its dependencies first, see `_prefetch`)."""
        if name in scope.values:
            return scope.values[name]
        if name in scope.failed:  # already reported
            raise Fail
        let = scope.lets[name]
        if name in scope.evaluating:
            raise self.fail("E404", f"'{name}' depends on itself", let.span)
        if not self.prefetching:
            self._prefetch(scope, name)
            if name in scope.values:
                return scope.values[name]
            raise Fail
        scope.evaluating.add(name)
        try:
            expr = let.value
            ov = self.overrides.take_let(name) if scope is self.main else None
            if ov is not None:
                expr = ov
            value, size, depth = self.measured_eval(expr, Env(self.main if ov is not None else scope), True)
        except Fail:
            scope.failed.add(name)
            raise
        finally:
            scope.evaluating.discard(name)
        scope.values[name] = value
        if isinstance(value, list):
            self.measures[id(value)] = (value, size, depth)
        return value

    def _let_deps(self, scope: ModuleScope, name: str) -> list[tuple[ModuleScope, str]]:
        """The lets that a let's expression (or its override) names, found without evaluating it."""
        expr, where = scope.lets[name].value, scope
        ov = self.overrides.peek_let(name) if scope is self.main else None
        if ov is not None:
            expr, where = ov, self.main
        deps = []
        for e in walk(expr):
            if isinstance(e, ast.Ref):
                names = [e.parts]
            elif isinstance(e, ast.Str):
                names = [m.group(1).split(".") for m in INTERP.finditer(e.raw)]
            else:
                continue
            for parts in names:
                if len(parts) == 1 and parts[0] in where.lets:
                    deps.append((where, parts[0]))
                elif len(parts) == 2 and parts[0] in where.imports and parts[1] in where.imports[parts[0]].lets:
                    deps.append((where.imports[parts[0]], parts[1]))
        return deps

    def _prefetch(self, scope: ModuleScope, name: str) -> None:
        """Evaluate the lets that `name` needs, deepest first, so that a chain of 10,000 lets written
        in reverse order never recurses. A cycle is reported where it closes."""
        self.prefetching = True
        try:
            order: list[tuple[ModuleScope, str]] = []
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
                        self.report.error("E404", f"'{n}' depends on itself", s.lets[n].span)
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
                    with contextlib.suppress(Fail):
                        self.let_value(s, n)
        finally:
            self.prefetching = False

    def _interpolate(self, s: ast.Str, env: Env) -> str:
        """`${name}` in a string: a let or template parameter, else an environment variable (never
        one whose name looks like a credential), else the `:-default`."""
        quoted = s.span.line == s.span.end_line and s.span.end_col - s.span.col == len(s.raw) + 2

        def where(m: re.Match) -> Span:
            col = s.span.col + int(quoted) + m.start()
            return Span(s.span.file, s.span.line, col, s.span.line, col + len(m.group(0)), s.span.chain)

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(3)
            parts = name.split(".")
            if len(parts) == 1 and (parts[0] in env.params or parts[0] in env.scope.lets) or (
                    len(parts) == 2 and parts[0] in env.scope.imports):
                value = self.lookup(ast.Ref(s.span, parts), env, False)
                return str(value)
            word = secret_word(name)
            if word is not None:  # refused whether or not it is set: its value must reach no record
                raise self.fail("E420", f"'${{{name}}}' looks like a credential (its name contains '{word}'); "
                                "environment variables holding secrets are not read into programs", where(m),
                                f"names containing {', '.join(SECRET_WORDS)} are refused; pass credentials to "
                                "the tools that need them through their own environment (e.g. WANDB_API_KEY)")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise self.fail("E403", f"'${{{name}}}' is neither a let nor a set environment variable", where(m),
                            f"give a default: \"${{{name}:-value}}\"")

        text = INTERP.sub(sub, s.raw)
        self._charge(len(text), s.span)
        return text

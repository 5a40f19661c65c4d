"""Shape declarations (contract C2): parsed without torch, evaluated without `eval`.

A registered class may set two class attributes:

    shapes = "tokens: long[B, N] < vocab -> x: [B, N, dim]"
    checks = (("dim % heads == 0", "heads ({heads}) must divide dim ({dim})"),)

Grammar of `shapes` (whitespace is free):

    spec   := "@" NAME                       # a rule: function NAME in l3m/dsl/shapes/rules.py
            | ports? "->" ports?             # inputs -> outputs (either side may be empty)
    ports  := port ("," port)* ","?
    port   := NAME ":" DTYPE? ("[" dims? "]")? ("<" expr)?
    DTYPE  := "float" | "long" | "int" | "bool"
    dims   := dim ("," dim)*
    dim    := "..." | "_" | expr             # "..." at most once per port: any number of dims
    expr   := term (("+" | "-") term)*
    term   := atom (("*" | "//" | "%") atom)*
    atom   := INT | NAME | "(" expr ")"

- Ports are named as in `forward` (inputs) and `outputs` (outputs). A port that is not listed has an
  unknown shape; an optional port that is listed is checked when it is bound. Without brackets a port's
  dims are unknown (only its dtype/bound say something); `[]` is a scalar. An output without a dtype
  has the dtype of the input port of the same name (`x: [B, N, dim] -> x: [B, N, dim]` keeps it).
- A NAME is the constructor argument of that name when the class has one (its value after defaults;
  None or a non-integer makes that dim unknown), else a symbol (B, N, H, W, ...) bound by unification
  with the shapes the block actually receives; a symbol first seen in an output stays symbolic (`B`).
- `< bound`: integer values are below `bound`: for an input, what the block accepts (an embedding's
  `vocab`); for an output or a source, what it emits (`label: long[B] < 10`).
- A data source's declaration may also name `tokenizer_vocab`: the vocabulary size of the tokenizer its
  arguments name (`tokens: long[B, seq_len] < tokenizer_vocab`; unknown when it is given at run time).

`checks` are (expression, message) pairs: boolean expressions over the constructor arguments (after
defaults) and the symbols the shapes bound to integers (e.g. `N <= max_len`), with integers, floats,
strings, True/False/None, lists/tuples, + - * / // % **, comparisons (chained too), and/or/not, `in`,
`x if c else y`, `len(..)`, `min(..)`, `max(..)`, `abs(..)`. A check whose names are unknown, or None, is skipped.
The message's `{name}` fields are replaced by the values of those names.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DTYPES = ("float", "long", "int", "bool")

# A dim expression: an int, a name, or ("op", left, right) with op in + - * // %.
Dim = Any


class ShapeError(Exception):
    """A rule (or the engine) found shapes that cannot work; `arg` names the constructor argument at fault."""

    def __init__(self, message: str, arg: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.arg = arg


class SpecSyntaxError(ValueError):
    """A `shapes` string or `checks` expression that does not follow the grammar (a bug in the declaration)."""


@dataclass(frozen=True)
class TensorType:
    """What is known about a tensor: dtype, dims (ints, symbol names, "?" one unknown dim, "..." any
    number of unknown dims; None: nothing known) and an exclusive upper bound of its integer values."""

    dtype: str | None = None
    dims: tuple[int | str, ...] | None = None
    bound: int | str | None = None

    def __str__(self) -> str:
        dims = "[?]" if self.dims is None else "[" + ", ".join(str(d) for d in self.dims) + "]"
        if self.dims is None and self.dtype is not None:
            dims = ""
        out = f"{self.dtype or ''}{dims}"
        if self.bound is not None:
            out += f" < {self.bound}"
        return out

    @property
    def known(self) -> bool:
        return self.dtype is not None or self.dims is not None or self.bound is not None


@dataclass(frozen=True)
class PortSpec:
    name: str
    dtype: str | None
    dims: tuple[Dim, ...] | None  # "..." and "_" stand as those strings
    bound: Dim | None


@dataclass(frozen=True)
class ShapeSpec:
    """A parsed `shapes` string: either a rule name or inputs/outputs."""

    rule: str | None = None
    inputs: tuple[PortSpec, ...] = ()
    outputs: tuple[PortSpec, ...] = ()

    def input(self, name: str) -> PortSpec | None:
        return next((p for p in self.inputs if p.name == name), None)

    def output(self, name: str) -> PortSpec | None:
        return next((p for p in self.outputs if p.name == name), None)


_TOKEN = re.compile(r"\s*(?:(\.\.\.)|(//)|(->)|(\d+)|([A-Za-z_][A-Za-z_0-9]*)|(.))")


def _tokens(text: str) -> list[str]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        out.append(m.group(m.lastindex))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            want = f"'{expected}'" if expected else "more"
            raise SpecSyntaxError(f"shapes {self.text!r}: expected {want}, found {tok!r}")
        self.i += 1
        return tok

    def name(self) -> str:
        tok = self.take()
        if not (tok[0].isalpha() or tok[0] == "_"):
            raise SpecSyntaxError(f"shapes {self.text!r}: expected a name, found {tok!r}")
        return tok

    def spec(self) -> ShapeSpec:
        if self.peek() == "@":
            self.take()
            rule = self.name()
            self.end()
            return ShapeSpec(rule=rule)
        inputs = self.ports(stop="->")
        self.take("->")
        outputs = self.ports(stop=None)
        self.end()
        names = [p.name for p in inputs]
        if len(set(names)) != len(names) or len({p.name for p in outputs}) != len(outputs):
            raise SpecSyntaxError(f"shapes {self.text!r}: a port is listed twice")
        return ShapeSpec(inputs=tuple(inputs), outputs=tuple(outputs))

    def end(self) -> None:
        if self.peek() is not None:
            raise SpecSyntaxError(f"shapes {self.text!r}: unexpected {self.peek()!r}")

    def ports(self, stop: str | None) -> list[PortSpec]:
        out: list[PortSpec] = []
        while self.peek() not in (stop, None):
            out.append(self.port())
            if self.peek() == ",":
                self.take()
            elif self.peek() not in (stop, None):
                raise SpecSyntaxError(f"shapes {self.text!r}: expected ',' or {stop or 'the end'!r}, "
                                      f"found {self.peek()!r}")
        return out

    def port(self) -> PortSpec:
        name = self.name()
        self.take(":")
        dtype = None
        if self.peek() in DTYPES:
            dtype = self.take()
        dims = None
        if self.peek() == "[":
            self.take()
            items: list[Dim] = []
            while self.peek() != "]":
                if self.peek() in ("...", "_"):
                    items.append(self.take())
                else:
                    items.append(self.expr())
                if self.peek() == ",":
                    self.take()
                elif self.peek() != "]":
                    raise SpecSyntaxError(f"shapes {self.text!r}: expected ',' or ']', found {self.peek()!r}")
            self.take("]")
            if items.count("...") > 1:
                raise SpecSyntaxError(f"shapes {self.text!r}: '...' more than once in port {name!r}")
            dims = tuple(items)
        bound = None
        if self.peek() == "<":
            self.take()
            bound = self.expr()
        if dtype is None and dims is None and bound is None:
            raise SpecSyntaxError(f"shapes {self.text!r}: port {name!r} says nothing (give a dtype, dims or bound)")
        return PortSpec(name, dtype, dims, bound)

    def expr(self) -> Dim:
        left = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            left = (op, left, self.term())
        return left

    def term(self) -> Dim:
        left = self.atom()
        while self.peek() in ("*", "//", "%"):
            op = self.take()
            left = (op, left, self.atom())
        return left

    def atom(self) -> Dim:
        tok = self.peek()
        if tok == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            return inner
        if tok is not None and tok.isdigit():
            self.take()
            return int(tok)
        if tok == "_" or tok == "...":
            raise SpecSyntaxError(f"shapes {self.text!r}: {tok!r} stands only alone as a dim")
        return self.name()


@lru_cache(maxsize=4096)
def parse_spec(text: str) -> ShapeSpec:
    """Parse a `shapes` string (cached: declarations are class attributes, parsed once)."""
    return _Parser(text).spec()


def dim_names(d: Dim) -> set[str]:
    """Names a dim expression uses."""
    if isinstance(d, str):
        return set() if d in ("...", "_") else {d}
    if isinstance(d, tuple):
        return dim_names(d[1]) | dim_names(d[2])
    return set()


def dim_text(d: Dim) -> str:
    """A dim expression written back (for symbolic results such as `N + 1`)."""
    if isinstance(d, tuple):
        op, a, b = d
        sa = dim_text(a) if not (isinstance(a, tuple) and _PREC[a[0]] < _PREC[op]) else f"({dim_text(a)})"
        right_paren = isinstance(b, tuple) and _PREC[b[0]] <= _PREC[op]
        sb = f"({dim_text(b)})" if right_paren else dim_text(b)
        return f"{sa} {op} {sb}"
    return str(d)


_PREC = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}
_INT_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "%": operator.mod}


def eval_dim(d: Dim, env: dict[str, int | str]) -> int | str | None:
    """A dim expression's value: an int when every name is bound to an int, a symbolic string when
    names are bound to symbols, None when a name is unbound or unknown ("?")."""
    if isinstance(d, int):
        return d
    if isinstance(d, str):
        v = env.get(d)
        if v is None or v == "?":
            return None
        return v
    op, a, b = d
    va, vb = eval_dim(a, env), eval_dim(b, env)
    if va is None or vb is None:
        return None
    if isinstance(va, int) and isinstance(vb, int):
        if op in ("//", "%") and vb == 0:
            return None
        return _INT_OPS[op](va, vb)
    sa = f"({va})" if isinstance(va, str) and not va.isidentifier() else str(va)
    sb = f"({vb})" if isinstance(vb, str) and not vb.isidentifier() else str(vb)
    return f"{sa} {op} {sb}"


# ---- checks -------------------------------------------------------------------------------------------

class Unknown(Exception):
    """A check names something unknown (or None): the check is skipped."""


_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
        ast.Is: operator.is_, ast.IsNot: operator.is_not}
_FUNCS = {"len": len, "min": min, "max": max, "abs": abs}


@lru_cache(maxsize=4096)
def parse_check(expr: str) -> ast.Expression:
    """Parse a check expression; raises SpecSyntaxError for anything outside the allowed subset."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise SpecSyntaxError(f"check {expr!r}: {e.msg}") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
                               ast.UAdd, ast.BinOp, ast.Compare, ast.Name, ast.Load, ast.Constant, ast.List,
                               ast.Tuple, ast.IfExp, ast.Call, *_BIN, *_CMP))
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords
        if not ok:
            raise SpecSyntaxError(f"check {expr!r}: {type(node).__name__} is not allowed in a check")
    return tree


def check_names(expr: str) -> list[str]:
    """Names a check reads, in the order they appear (functions excluded)."""
    tree = parse_check(expr)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    seen: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and id(n) not in calls and n.id not in seen:
            seen.append(n.id)
    # ast.walk is breadth-first; order by position in the text
    return sorted(seen, key=lambda name: min(n.col_offset for n in ast.walk(tree)
                                             if isinstance(n, ast.Name) and n.id == name))


def eval_check(expr: str, env: dict[str, Any]) -> bool | None:
    """True/False, or None when the check is skipped (a name unknown or None, or it cannot be computed)."""
    try:
        return bool(_eval(parse_check(expr).body, env))
    except Unknown:
        return None
    except (TypeError, ValueError, ArithmeticError, OverflowError):
        return None


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        v = env.get(node.id)
        if v is None:
            raise Unknown(node.id)
        return v
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, env) for v in node.values)
        return any(_eval(v, env) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        return not v if isinstance(node.op, ast.Not) else (-v if isinstance(node.op, ast.USub) else +v)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Pow) and (abs(b) > 64 if isinstance(b, (int, float)) else True):
            raise Unknown("**")
        if isinstance(node.op, (ast.Pow, ast.Mult)) and any(isinstance(v, int) and v.bit_length() > 256
                                                            for v in (a, b)):
            raise Unknown("a number too large")  # (((2**64)**64)**64)... would never finish
        if isinstance(node.op, ast.Mult) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise Unknown("*")  # no list/string repetition
        return _BIN[type(node.op)](a, b)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Call):
        return _FUNCS[node.func.id](*[_eval(a, env) for a in node.args])
    raise Unknown(type(node).__name__)


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z_0-9]*)\}")


def format_message(message: str, env: dict[str, Any]) -> str:
    """`{name}` fields replaced by values (only plain names: no attribute or index access)."""
    return _FIELD.sub(lambda m: str(env[m.group(1)]) if m.group(1) in env else m.group(0), message)


def validate(shapes: str | None, checks: tuple = ()) -> list[str]:
    """Problems with a class's declarations (for tests and the manifest writer): [] when fine."""
    problems = []
    if shapes:
        try:
            spec = parse_spec(shapes)
            if spec.rule is not None:
                from l3m.dsl.shapes import rules

                if not callable(getattr(rules, spec.rule, None)) or spec.rule.startswith("_"):
                    problems.append(f"shapes {shapes!r}: no rule {spec.rule!r} in l3m/dsl/shapes/rules.py")
        except SpecSyntaxError as e:
            problems.append(str(e))
    for item in checks or ():
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            problems.append(f"checks: {item!r} is not an (expression, message) pair")
            continue
        try:
            parse_check(item[0])
        except SpecSyntaxError as e:
            problems.append(str(e))
    return problems

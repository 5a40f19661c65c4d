"""Read an extension module's registered entries from its source, with `ast`: no project code runs.

`lint` and `graph` (and `compile_file` by default) check a file that names `extension "pkg.mod"`
against entries read here: each `@register(kind, name)` class or function (also `@l3m.register`,
`@registry.register`, keyword forms, aliases, and `register(kind)(Cls)` calls) becomes a
`StaticEntry` with the same interface as `registry.Entry`: constructor signature and type hints,
input ports (`forward` / `__call__`), output ports (the literal `outputs = (...)`).

Bases are followed within the module, into modules of the extension's own package (read the same
way), into l3m (its registered classes from the registry manifest, its other classes read from its
source), `torch.nn.Module` (known: no arguments, no ports) and the standard typing modules (imported:
they are not project code). Nothing of torch or l3m's model code is imported.
What cannot be known without running code (outputs computed at import, a base from another
package, `**kwargs`) does not fail: the entry records which check is skipped, and the resolver
reports it as a warning (W104). The package's own `__init__` modules and module-level imports
within the package are read too, since importing the extension would run them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from l3m.dsl.ext_locate import Located, locate
from l3m.interfaces import INTERFACES, use
from l3m.registry import _PORT_METHOD, KINDS, Entry, Port, ports_from_params

MAX_MODULES = 256  # modules of one extension package read at most
MAX_SOURCE_BYTES = 4 * 1024 * 1024
# Modules whose classes may be imported to learn what an extension's class inherits from them.
TRUSTED = ("typing", "abc", "collections", "builtins")
L3M_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the `l3m` package
_EMPTY = inspect.Parameter.empty


class _Expr:
    """A default value that is an expression, not a literal: known to exist, value unknown."""

    def __init__(self, node: ast.expr):
        self.node = node

    def __repr__(self) -> str:
        return _source(self.node)


@dataclass
class StaticEntry:
    """What the checker may know about an extension entry read from source (`registry.Entry`'s interface).

    `inputs` / `outputs` are None when they cannot be known statically: the port checks are skipped.
    """

    kind: str
    name: str
    module: str
    signature: inspect.Signature
    type_hints: dict[str, Any]
    inputs: tuple[Port, ...] | None
    outputs_spec: tuple[str, ...] | None
    doc: str = ""
    skipped: list[str] = field(default_factory=list)  # which checks are skipped, and why
    obj: Any = None  # nothing was imported
    extra: dict = field(default_factory=dict)
    shapes: str | None = None  # the class's literal `shapes` declaration (l3m.dsl.shapes), if any
    checks: tuple = ()  # its literal `checks`
    interfaces: tuple[str, ...] = ()  # the `l3m.interfaces` it subclasses directly (`class X(nn.Module, Norm)`)

    @property
    def outputs(self) -> tuple[Port, ...] | None:
        if self.outputs_spec is None:
            return None
        return tuple(Port(n.rstrip("?"), optional=n.endswith("?")) for n in self.outputs_spec)


@dataclass
class StaticExtension:
    module: str
    entries: dict[str, StaticEntry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # registrations that could not be read
    error: str | None = None  # the module cannot be found or parsed: importing it would fail too
    files: list[Path] = field(default_factory=list)


@dataclass
class _Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    imports: dict[str, tuple[str, ...]] = field(default_factory=dict)  # local name -> absolute dotted parts
    imported_modules: list[str] = field(default_factory=list)

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


# What a base-class lookup finds: ("ast", module, def) | ("dataclass", module, class) | ("real", obj)
# | ("value", tuple) | ("unknown", why); None when no class in the chain defines it.
_Found = tuple | None


def read_extension(module: str, roots: list[Path]) -> StaticExtension:
    """The entries that importing `module` would register, read from source under `roots`."""
    try:
        return _Reader(module, roots).run()
    except (RecursionError, MemoryError) as e:  # hostile nesting: refuse it like unreadable source
        return StaticExtension(module, error=f"its source nests too deeply to read ({type(e).__name__})")


class _Reader:
    def __init__(self, module: str, roots: list[Path]):
        self.ext = StaticExtension(module)
        self.roots = roots
        self.top = module.split(".")[0]
        self.mods: dict[str, _Module | None] = {}
        self.located: Located | None = None

    # ------------------------------------------------------------------ modules
    def run(self) -> StaticExtension:
        name = self.ext.module
        self.located = locate(name, self.roots)
        if self.located is None:
            shown = ", ".join(str(r) for r in self.roots[:6]) + (", ..." if len(self.roots) > 6 else "")
            self.ext.error = f"no Python source for module '{name}' was found (searched: {shown})"
            return self.ext
        parts = name.split(".")
        queue = [".".join(parts[: i + 1]) for i in range(len(parts))]  # parents first, as import runs them
        done: set[str] = set()
        while queue and len(done) < MAX_MODULES:
            dotted = queue.pop(0)
            if dotted in done:
                continue
            done.add(dotted)
            m = self.module(dotted, required=name == dotted or name.startswith(dotted + "."))  # import runs these
            if m is None:
                if self.ext.error:
                    return self.ext
                continue
            self._registrations(m)
            queue += [t for t in m.imported_modules if t not in done]
        return self.ext

    def module(self, dotted: str, required: bool = False) -> _Module | None:
        if dotted in self.mods:
            return self.mods[dotted]
        self.mods[dotted] = None
        library = dotted.split(".")[0] == "l3m" != self.top  # l3m's own source, read for base classes
        if (dotted.split(".")[0] != self.top and not library) or len(self.mods) > MAX_MODULES:
            return None
        where = locate(dotted, [L3M_ROOT]) if library else locate(dotted, [self.located.root]) if self.located else None
        if where is None:
            return None
        try:
            with open(where.path, "rb") as f:  # bounded: a link to a huge file is not read whole
                data = f.read(MAX_SOURCE_BYTES + 1)
            if len(data) > MAX_SOURCE_BYTES:
                raise ValueError(f"larger than {MAX_SOURCE_BYTES // (1024 * 1024)} MiB")
            tree = ast.parse(data, filename=str(where.path))
        except (OSError, ValueError, SyntaxError, RecursionError, MemoryError) as e:
            why = f"cannot read {where.path}: {type(e).__name__}: {e}"
            if required:
                self.ext.error = why
            else:
                self.ext.warnings.append(f"{why}; its registrations are not seen")
            return None
        m = _Module(dotted, where.path, where.is_package, tree)
        if not library:
            self.ext.files.append(where.path)
        for stmt in _top_level(tree):
            if isinstance(stmt, ast.ClassDef):
                m.classes[stmt.name] = stmt
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                m.functions[stmt.name] = stmt
            elif isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if a.asname:
                        m.imports[a.asname] = tuple(a.name.split("."))
                    else:
                        head = a.name.split(".")[0]
                        m.imports[head] = (head,)
                    m.imported_modules.append(a.name)
            elif isinstance(stmt, ast.ImportFrom):
                base = self._absolute(m, stmt)
                if base is None:
                    continue
                m.imported_modules.append(base)
                for a in stmt.names:
                    if a.name == "*":
                        continue
                    m.imports[a.asname or a.name] = (*base.split("."), a.name)
                    m.imported_modules.append(f"{base}.{a.name}")  # `from pkg import submodule`
        m.imported_modules = [t for t in m.imported_modules if t.split(".")[0] == self.top]
        # Importing `a.b.c` runs `a` and `a.b` first.
        m.imported_modules = [p for t in m.imported_modules for p in _prefixes(t)]
        self.mods[dotted] = m
        return m

    @staticmethod
    def _absolute(m: _Module, stmt: ast.ImportFrom) -> str | None:
        if not stmt.level:
            return stmt.module
        pkg = m.package.split(".") if m.package else []
        if stmt.level - 1 > len(pkg) or (stmt.level - 1 == len(pkg) and not stmt.module):
            return None
        base = pkg[: len(pkg) - (stmt.level - 1)]
        return ".".join(base + ([stmt.module] if stmt.module else []))

    # ------------------------------------------------------------------ registrations
    def _registrations(self, m: _Module) -> None:
        for stmt in _top_level(m.tree):
            if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in stmt.decorator_list:
                    if isinstance(dec, ast.Call) and self._is_register(m, dec.func):
                        self._register(m, dec, stmt)
            call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
            # `register("block")(Cls)` written as a statement
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Call) and len(call.args) == 1
                    and self._is_register(m, call.func.func)):
                target = call.args[0]
                node = (m.classes.get(target.id) or m.functions.get(target.id)) if isinstance(target, ast.Name) else None
                if node is None:
                    self._warn(m, call, "registers an object that is not a class or function of the module")
                else:
                    self._register(m, call.func, node)

    def _is_register(self, m: _Module, func: ast.expr) -> bool:
        parts = _dotted(func)
        if not parts or parts[0] in m.functions or parts[0] in m.classes:
            return False  # the module's own `register`, not l3m's
        full = (*m.imports[parts[0]], *parts[1:]) if parts[0] in m.imports else parts
        if len(full) == 1:
            return full[0] == "register"  # unbound `register`: from a star import of l3m
        return full[0] == "l3m" and full[-1] == "register"

    def _register(self, m: _Module, dec: ast.Call, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        args = list(dec.args)
        kw = {k.arg: k.value for k in dec.keywords if k.arg}
        kind_node = args[0] if args else kw.get("kind")
        name_node = args[1] if len(args) > 1 else kw.get("name")
        kind = _literal(kind_node)
        if not isinstance(kind, str):
            self._warn(m, dec, f"registers '{node.name}' with a kind that is not a literal string; it is not checked")
            return
        if kind not in KINDS:
            self.ext.error = (f"{_where(m, dec)}: '{node.name}' is registered as unknown kind {kind!r} "
                              f"(expected one of {', '.join(KINDS)})")
            return
        name = node.name
        if name_node is not None and not (isinstance(name_node, ast.Constant) and name_node.value is None):
            name = _literal(name_node)
            if not isinstance(name, str):
                self._warn(m, dec, f"registers '{node.name}' under a name that is not a literal string; it is not checked")
                return
        extra = {k: _literal(v) for k, v in kw.items() if k not in ("kind", "name")}
        problem = _declaration_problem(extra)
        if problem:  # importing would raise in `register`: say so, as for an unknown kind
            self.ext.error = f"{_where(m, dec)}: the registration of '{node.name}': {problem}"
            return
        self.ext.entries[name] = self._entry(m, node, kind, name, extra)

    def _warn(self, m: _Module, node: ast.AST, text: str) -> None:
        self.ext.warnings.append(f"{_where(m, node)}: {text}")

    # ------------------------------------------------------------------ one entry
    def _entry(self, m: _Module, node, kind: str, name: str, extra: dict) -> StaticEntry:
        skipped: list[str] = []
        method = _PORT_METHOD.get(kind)
        if isinstance(node, ast.ClassDef):
            ref = ("ast", m, node)
            sig, hints = self._signature(self._find(ref, "__init__"), name, "the constructor", skipped, init=True)
            inputs = None
            if method is not None:
                inputs = self._ports(self._find(ref, method), name, method, skipped)
            else:
                inputs = ()
            outputs = self._outputs(self._find(ref, "outputs"), name, kind, skipped)
            declared = {k: self._find(ref, k) for k in ("shapes", "checks")}
            declared = {k: f[1] for k, f in declared.items() if f is not None and f[0] == "value"}
        else:
            declared = {}
            sig, hints = self._signature(("ast", m, node), name, "the function", skipped, init=False)
            inputs = () if method is None else None
            if method is not None:
                skipped.append(f"the input ports of '{name}' are not known statically (a registered function): "
                               "input-port checks skipped")
            outputs = ("out",) if kind in ("loss", "metric") else ()
        for k in ("shapes", "checks"):  # `@register("block", shapes=..., checks=...)`: set on the class
            if k in extra:
                declared[k] = extra[k]
        shapes = declared.get("shapes")
        checks = declared.get("checks")
        bases = [(_dotted(b) or ("",))[-1] for b in getattr(node, "bases", ())]
        return StaticEntry(kind=kind, name=name, module=m.name, signature=sig, type_hints=hints, inputs=inputs,
                           outputs_spec=outputs, doc=ast.get_docstring(node) or "", skipped=skipped, extra=extra,
                           shapes=shapes if isinstance(shapes, str) else None,
                           checks=tuple(tuple(c) for c in checks) if isinstance(checks, (tuple, list)) else (),
                           interfaces=tuple(b for b in bases if b in INTERFACES))

    def _signature(self, found: _Found, name: str, what: str, skipped: list[str],
                   init: bool) -> tuple[inspect.Signature, dict[str, Any]]:
        anything = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                                      inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
        if found is None:
            return inspect.Signature([]), {}
        tag = found[0]
        if tag == "unknown":
            skipped.append(f"the constructor of '{name}' is not known statically ({found[1]}): argument checks skipped")
            return anything, {}
        if tag == "manifest":
            entry = found[1]
            sig = entry.signature
            if [(p.name, p.kind) for p in sig.parameters.values()] == _TRIVIAL_PARAMS:
                return inspect.Signature([]), {}  # torch.nn.Module's own (*args, **kwargs)
            if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                skipped.append(f"{what} of '{name}' takes **kwargs: argument names are not checked")
            return sig, dict(entry.type_hints)
        if tag == "real":
            obj = found[1]
            if getattr(obj, "__init__", None) in [t.__init__ for t in _trivial_inits()]:
                return inspect.Signature([]), {}
            try:
                sig = Entry(kind="block", name=name, obj=obj).signature
                hints = Entry(kind="block", name=name, obj=obj).type_hints
            except (TypeError, ValueError):
                skipped.append(f"the constructor of '{name}' is not known statically: argument checks skipped")
                return anything, {}
            if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                skipped.append(f"{what} of '{name}' takes **kwargs: argument names are not checked")
            return sig, hints
        if tag == "dataclass":
            params = _dataclass_params(found[1], found[2])
        else:
            params = _params(found[1], found[2], drop_first=init)
        sig = inspect.Signature(params, __validate_parameters__=False)
        if any(p.kind is p.VAR_KEYWORD for p in params):
            skipped.append(f"{what} of '{name}' takes **{next(p.name for p in params if p.kind is p.VAR_KEYWORD)}: "
                           "argument names are not checked")
        hints = {p.name: p.annotation for p in params if p.annotation is not _EMPTY}
        return sig, hints

    def _ports(self, found: _Found, name: str, method: str, skipped: list[str]) -> tuple[Port, ...] | None:
        if found is None:
            return ()
        if found[0] == "unknown":
            skipped.append(f"the input ports of '{name}' are not known statically ({found[1]}): input-port checks skipped")
            return None
        if found[0] == "ports":  # a built-in base's ports, from the registry manifest
            return found[1]
        if found[0] == "real":
            try:
                params = list(inspect.signature(found[1]).parameters.values())
            except (TypeError, ValueError):
                skipped.append(f"the input ports of '{name}' are not known statically: input-port checks skipped")
                return None
        else:
            params = _params(found[1], found[2], drop_first=False)
        return ports_from_params(params[1:])

    @staticmethod
    def _outputs(found: _Found, name: str, kind: str, skipped: list[str]) -> tuple[str, ...] | None:
        out: Any = ()
        if found is not None and found[0] == "unknown":
            skipped.append(f"the output ports of '{name}' are not known statically ({found[1]}): "
                           "output-port checks skipped")
            return None
        if found is not None:
            out = found[1]
        try:
            out = tuple(out or ())
        except TypeError:
            out = None
        if out is None or not all(isinstance(o, str) for o in out):
            skipped.append(f"the output ports of '{name}' are not known statically (`outputs` is not a tuple of "
                           "strings): output-port checks skipped")
            return None
        if kind in ("loss", "metric") and not out:
            out = ("out",)
        return out

    # ------------------------------------------------------------------ classes and their bases
    def _find(self, ref: tuple, member: str, depth: int = 0) -> _Found:
        """Where `member` (a method, or the `outputs` attribute) of class `ref` is defined."""
        if depth > 16:
            return ("unknown", "the class hierarchy is too deep")
        if ref[0] == "real":
            return _find_real(ref[1], member)
        if ref[0] == "manifest":
            return _find_manifest(ref[1], member)
        _, m, cls = ref
        for stmt in cls.body:
            if member in ("shapes", "checks"):  # shape declarations: literals only, else unknown (not checked)
                value = _assigned(stmt, member)
                if value is not None:
                    lit = _literal(value)
                    return ("value", lit) if isinstance(lit, (str, tuple, list)) else ("unknown", "computed")
            elif member == "outputs":
                value = _assigned(stmt, "outputs")
                if value is not None:
                    lit = _literal(value)
                    return ("value", lit) if isinstance(lit, (tuple, list)) else (
                        "unknown", f"`outputs` is computed in {m.path.name}:{stmt.lineno}")
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == member:
                return ("ast", m, stmt)
        if member == "__init__" and any(_dotted(d.func if isinstance(d, ast.Call) else d)[-1:] == ("dataclass",)
                                         for d in cls.decorator_list):
            return ("dataclass", m, cls)
        for base in cls.bases:
            target = self._resolve(m, base)
            if target is None:
                return ("unknown", f"base class '{_source(base)}' is not in the extension's package")
            found = self._find(target, member, depth + 1)
            if found is not None:
                return found
        return None

    def _resolve(self, m: _Module, expr: ast.expr, depth: int = 0) -> tuple | None:
        if isinstance(expr, ast.Subscript):  # Generic[T]
            expr = expr.value
        parts = _dotted(expr)
        if not parts:
            return None
        if len(parts) == 1 and parts[0] in m.classes:
            return ("ast", m, m.classes[parts[0]])
        if parts[0] in m.imports:
            return self._resolve_abs((*m.imports[parts[0]], *parts[1:]), depth + 1)
        if len(parts) == 1 and parts[0] == "object":
            return ("real", object)
        return None

    def _resolve_abs(self, full: tuple[str, ...], depth: int) -> tuple | None:
        if depth > 16:
            return None
        if full in _NN_MODULE:  # the usual base, known without importing torch
            return ("real", _ModuleStandIn)
        if full[0] == "torch":
            return None  # reading an extension does not import torch for it: another torch base is unknown
        if full[0] == "l3m":
            entry = _manifest_class(full)
            if entry is not None:  # a registered built-in: what the registry manifest records
                return ("manifest", entry)
        elif full[0] in TRUSTED:
            obj = _import_attr(full)
            return ("real", obj) if inspect.isclass(obj) else None
        for i in range(len(full) - 1, 0, -1):
            mod = self.module(".".join(full[:i]))
            if mod is not None:
                rest = full[i:]
                if len(rest) == 1 and rest[0] in mod.classes:
                    return ("ast", mod, mod.classes[rest[0]])
                if rest[0] in mod.imports:  # re-exported
                    return self._resolve_abs((*mod.imports[rest[0]], *rest[1:]), depth + 1)
                return None
        return None


# ---------------------------------------------------------------------- helpers


def _declaration_problem(extra: dict[str, Any]) -> str | None:
    """What `register` would refuse in these keywords (a misspelt trait, a literal trait value it does not
    allow; see `l3m.traits`), or None. Computed values are not judged."""
    from l3m import traits

    for k, v in extra.items():
        if k in ("shapes", "checks") or isinstance(v, _Expr):
            continue
        if k not in traits.TRAITS:
            meant = traits.misspelt_trait(k)
            if meant:
                return f"unknown keyword {k!r}; did you mean {meant!r}?"
            continue
        try:
            traits.check_trait(k, v)
        except (TypeError, ValueError) as e:
            return str(e)
    return None


def _top_level(tree: ast.Module):
    """Module-level statements, including those inside top-level `if` / `try` blocks."""
    stack = list(reversed(tree.body))
    while stack:
        s = stack.pop()
        yield s
        if isinstance(s, ast.If):
            stack.extend(reversed(s.body + s.orelse))
        elif isinstance(s, ast.Try):
            stack.extend(reversed(s.body + [x for h in s.handlers for x in h.body] + s.orelse + s.finalbody))


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _dotted(expr: ast.expr) -> tuple[str, ...]:
    out: list[str] = []
    while isinstance(expr, ast.Attribute):
        out.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return ()
    out.append(expr.id)
    return tuple(reversed(out))


def _source(node: ast.expr) -> str:
    try:
        text = ast.unparse(node)
    except (RecursionError, ValueError):
        return "<expression>"
    return text if len(text) <= 80 else text[:77] + "..."


def _where(m: _Module, node: ast.AST) -> str:
    return f"{m.path.name}:{getattr(node, 'lineno', 0)}"


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _Expr(node)


def _default(node: ast.expr) -> Any:
    """A parameter's default: a literal, or a component default `use("Attention", heads=4)` (materialised
    by the resolver as for a built-in block), else the expression as written."""
    if isinstance(node, ast.Call) and _dotted(node.func)[-1:] == ("use",) and len(node.args) == 1 \
            and all(k.arg for k in node.keywords):
        name, kwargs = _literal(node.args[0]), {k.arg: _default(k.value) for k in node.keywords}
        if isinstance(name, str) and not any(isinstance(v, _Expr) for v in kwargs.values()):
            return use(name, **kwargs)
    return _literal(node)


def _assigned(stmt: ast.stmt, name: str) -> ast.expr | None:
    if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
        return stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
        return stmt.value
    return None


def _import_attr(full: tuple[str, ...]) -> Any:
    """`full` (e.g. torch.nn.Module) from a trusted library; None if it is not there."""
    try:
        obj: Any = importlib.import_module(full[0])
        for i, part in enumerate(full[1:], start=1):
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                obj = importlib.import_module(".".join(full[: i + 1]))
        return obj
    except Exception:  # a name the library does not have: unknown, never a crash
        return None


def _find_real(obj: Any, member: str) -> _Found:
    if member in ("shapes", "checks"):
        return ("value", getattr(obj, member)) if hasattr(obj, member) else None
    if member == "outputs":
        return ("value", tuple(obj.outputs or ())) if hasattr(obj, "outputs") else None
    if member == "__init__":
        return ("real", obj)
    fn = getattr(obj, member, None)
    return ("real", fn) if fn is not None else None


_NN_MODULE = {("torch", "nn", "Module"), ("torch", "nn", "modules", "module", "Module")}
_TRIVIAL_PARAMS = [("args", inspect.Parameter.VAR_POSITIONAL), ("kwargs", inspect.Parameter.VAR_KEYWORD)]


def _manifest_class(full: tuple[str, ...]) -> Any:
    """The registry-manifest entry of the built-in class `full` names where it is defined
    (`l3m.model.blocks.layers.Linear`); None for another l3m name (read from l3m's source then)."""
    from l3m.registry_static import manifest_entries

    module, _, qualname = ".".join(full).rpartition(".")
    return next((e for e in manifest_entries() if e.module == module and e.qualname == qualname), None)


def _find_manifest(entry: Any, member: str) -> _Found:
    """`member` of a built-in registered class, as the registry manifest records it."""
    if member == "outputs":
        return ("value", entry.outputs_attr) if entry.outputs_attr is not None else None
    if member == "shapes":
        return ("value", entry.shapes) if entry.shapes is not None else None
    if member == "checks":
        return ("value", entry.checks) if entry.checks else None
    if member == "__init__":
        return ("manifest", entry)
    if member in ("shapes", "checks"):
        value = getattr(entry, member, None)
        return ("value", value) if value else None
    if _PORT_METHOD.get(entry.kind) == member:
        return ("ports", entry.inputs)
    return ("unknown", f"'{member}' of l3m's {entry.name} is not in the registry manifest")


class _ModuleStandIn:
    """`torch.nn.Module` as the checker sees it: no constructor arguments, `forward(*input)`, no outputs."""

    def forward(self, *input):  # noqa: A002 - torch's own parameter name, so ports match
        raise NotImplementedError


def _trivial_inits() -> tuple[Any, ...]:
    """Bases whose constructors take no arguments of the block's own (they accept *args, **kwargs)."""
    import abc

    out: list[Any] = [object, abc.ABC, typing.Generic]
    if "torch" in sys.modules:
        out.append(sys.modules["torch"].nn.Module)
    return tuple(out)


def _params(m: _Module, fn: ast.FunctionDef | ast.AsyncFunctionDef, drop_first: bool) -> list[inspect.Parameter]:
    P = inspect.Parameter
    a = fn.args
    positional = [(x, P.POSITIONAL_ONLY) for x in a.posonlyargs] + [(x, P.POSITIONAL_OR_KEYWORD) for x in a.args]
    defaults: list[Any] = [_EMPTY] * (len(positional) - len(a.defaults)) + [_default(d) for d in a.defaults]
    out = [P(x.arg, kind, default=d, annotation=annotation(x.annotation, m))
           for (x, kind), d in zip(positional, defaults)]
    if a.vararg:
        out.append(P(a.vararg.arg, P.VAR_POSITIONAL, annotation=annotation(a.vararg.annotation, m)))
    for x, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append(P(x.arg, P.KEYWORD_ONLY, default=_EMPTY if d is None else _default(d),
                     annotation=annotation(x.annotation, m)))
    if a.kwarg:
        out.append(P(a.kwarg.arg, P.VAR_KEYWORD))
    if drop_first and out and out[0].kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        out = out[1:]
    return out


def _dataclass_params(m: _Module, cls: ast.ClassDef) -> list[inspect.Parameter]:
    P = inspect.Parameter
    out = []
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if _dotted(stmt.annotation.value if isinstance(stmt.annotation, ast.Subscript) else stmt.annotation)[-1:] \
                == ("ClassVar",):
            continue
        default: Any = _EMPTY if stmt.value is None else _literal(stmt.value)
        out.append(P(stmt.target.id, P.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation(stmt.annotation, m)))
    return out


# ---------------------------------------------------------------------- annotations

_SIMPLE: dict[str, Any] = {
    "int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple, "dict": dict,
    "List": list, "Tuple": tuple, "Dict": dict, "Any": Any, "object": object, "None": type(None),
    "Sequence": typing.Sequence, "MutableSequence": typing.MutableSequence, "Mapping": dict,
}
_GENERIC: dict[str, Callable[[tuple], Any]] = {
    "list": lambda a: list[a[0]], "List": lambda a: list[a[0]],
    "Sequence": lambda a: typing.Sequence[a[0]], "MutableSequence": lambda a: typing.MutableSequence[a[0]],
    "tuple": lambda a: tuple[a], "Tuple": lambda a: tuple[a],
    "dict": lambda a: dict[a], "Dict": lambda a: dict[a], "Mapping": lambda a: dict[a],
    "Optional": lambda a: typing.Optional[a[0]],  # noqa: UP045 - a typing object built at run time
    "Union": lambda a: typing.Union[a],  # noqa: UP007
}


class _Unknown(Exception):
    pass


def annotation(node: ast.expr | None, m: _Module | None = None) -> Any:
    """The typing object an annotation's source stands for, or `Parameter.empty` when the checker
    would not model it anyway (a class of the project, a forward reference): then no type check."""
    if node is None:
        return _EMPTY
    try:
        return _ann(node, 0, _interface_names(m))
    except (_Unknown, TypeError, SyntaxError, ValueError, RecursionError):
        return _EMPTY


def _interface_names(m: _Module | None) -> dict[str, Any]:
    """How the module spells the interfaces of `l3m.interfaces` (`Norm`, `li.Norm`, `l3m.interfaces.Norm`):
    an annotation naming one accepts a component, as the imported class's annotation would."""
    out: dict[str, Any] = {}
    for local, full in (m.imports.items() if m is not None else ()):
        if full[:2] == ("l3m", "interfaces") and len(full) == 3 and full[2] in INTERFACES:
            out[local] = INTERFACES[full[2]]
        elif full in (("l3m",), ("l3m", "interfaces")):
            prefix = local if full == ("l3m", "interfaces") else f"{local}.interfaces"
            out.update({f"{prefix}.{name}": cls for name, cls in INTERFACES.items()})
    return out


def _ann(node: ast.expr, depth: int, known: dict[str, Any] | None = None) -> Any:
    if depth > 20:
        raise _Unknown
    if isinstance(node, ast.Constant):
        if node.value is None:
            return type(None)
        if isinstance(node.value, str):  # a string annotation (or `from __future__ import annotations`)
            return _ann(ast.parse(node.value, mode="eval").body, depth + 1, known)
        if node.value is Ellipsis:
            return Ellipsis
        raise _Unknown
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[_ann(node.left, depth + 1, known), _ann(node.right, depth + 1, known)]  # noqa: UP007
    parts = _dotted(node.value if isinstance(node, ast.Subscript) else node)
    if known and not isinstance(node, ast.Subscript) and ".".join(parts) in known:  # `norm: Norm`
        return known[".".join(parts)]
    if not parts or (len(parts) > 1 and parts[0] not in ("typing", "t", "collections", "abc", "builtins")):
        raise _Unknown
    head = parts[-1]
    if not isinstance(node, ast.Subscript):
        if head in _SIMPLE:
            return _SIMPLE[head]
        raise _Unknown
    items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    if head == "Literal":
        values = tuple(ast.literal_eval(x) for x in items)
        return Literal[values]
    if head == "Annotated":
        return _ann(items[0], depth + 1, known)
    if head not in _GENERIC:
        raise _Unknown
    return _GENERIC[head](tuple(_ann(x, depth + 1, known) for x in items))

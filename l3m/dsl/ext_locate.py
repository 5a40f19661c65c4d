"""Find an extension module's source file without importing it (or its parent packages).

`importlib.util.find_spec("a.b")` imports `a` to read its `__path__`, which runs `a/__init__.py`;
`lint` and `graph` must never run project code, so the path is resolved here with the rules of
Python's path finder, on the file system only.

Search order (the same for reading and for importing, so that `lint` and `train` agree):
  1. the entries of `sys.path`, in order ('' is the current directory): what `import` searches;
  2. the directory of the `.l3m` file;
  3. the project root: the nearest folder above the `.l3m` file holding `pyproject.toml`,
     `setup.py`, `setup.cfg` or `.git`;
  4. the current directory (and `src/` below the project root, for the src layout);
  5. packages installed in editable mode (`pip install -e`): setuptools' `__editable___*_finder.py`
     files in the folders above are read (with `ast`, not run) for where each package lives.
Within one folder a package (`name/__init__.py`) wins over a module (`name.py`); folders
without `__init__.py` are namespace packages whose portions are searched in order.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
_MAX_FINDER_BYTES = 1 << 20  # setuptools writes a few kilobytes


@dataclass(frozen=True)
class Located:
    """Where a module's source lies, and the search root that holds its top-level package."""

    module: str
    path: Path  # the .py file (`__init__.py` for a package)
    root: Path
    is_package: bool


def project_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if any((d / m).exists() for m in _ROOT_MARKERS):
            return d
    return None


def search_roots(l3m_file: str | None = None) -> list[Path]:
    """The folders searched for a top-level module, in order, without repeats."""
    cands = [Path(p or os.getcwd()) for p in sys.path if isinstance(p, str)]
    root = None
    if l3m_file:
        here = Path(os.path.abspath(l3m_file)).parent
        cands.append(here)
        root = project_root(here)
        if root is not None:
            cands.append(root)
    cands.append(Path(os.getcwd()))
    if l3m_file and root is not None:
        cands.append(root / "src")
    out: list[Path] = []
    seen: set[str] = set()
    for c in cands:
        key = os.path.realpath(c)
        if key not in seen and os.path.isdir(c):
            seen.add(key)
            out.append(c)
    return out


def _find(name: str, dirs: list[Path]) -> tuple[Path | None, bool, list[Path], Path | None]:
    """(source file, is a package, namespace portions, the dir it was found in) for `name` in `dirs`."""
    portions: list[Path] = []
    for d in dirs:
        pkg = d / name
        if pkg.is_dir():
            init = pkg / "__init__.py"
            if init.is_file():
                return init, True, [], d
        mod = d / f"{name}.py"
        if mod.is_file():
            return mod, False, [], d
        if pkg.is_dir():
            portions.append(pkg)
    return None, bool(portions), portions, portions[0].parent if portions else None


def _editable(name: str, roots: list[Path]) -> tuple[Path | None, bool, Path | None]:
    """A top-level package that an editable install maps to its source folder (read, never run)."""
    for d in roots:
        try:
            finders = sorted(d.glob("__editable___*_finder.py"))
        except OSError:
            continue
        for f in finders:
            target = _mapping(f).get(name)
            if not target:
                continue
            t = Path(target)
            if (t / "__init__.py").is_file():
                return t / "__init__.py", True, t.parent
            if t.is_file() and t.suffix == ".py":
                return t, False, t.parent
    return None, False, None


def _mapping(finder: Path) -> dict[str, str]:
    """The `MAPPING = {...}` literal of a setuptools editable finder."""
    try:
        if not finder.is_file():  # a FIFO or a link to /dev/zero would never finish reading
            return {}
        with open(finder, "rb") as f:
            tree = ast.parse(f.read(_MAX_FINDER_BYTES))
    except (OSError, ValueError, SyntaxError, RecursionError, MemoryError):
        return {}
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else getattr(stmt, "target", None)
        if isinstance(target, ast.Name) and target.id == "MAPPING" and stmt.value is not None:
            try:
                value = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return {}
            return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)} \
                if isinstance(value, dict) else {}
    return {}


def locate(module: str, roots: list[Path]) -> Located | None:
    """The source file of dotted `module`, or None if no folder in `roots` provides it as source."""
    parts = module.split(".")
    dirs = list(roots)
    top_root: Path | None = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        path, is_pkg, portions, where = _find(part, dirs)
        if i == 0:
            top_root = where
            if path is None and not portions:
                path, is_pkg, where = _editable(part, roots)
                top_root = where
        if path is None and not portions:
            return None
        if last:
            if path is None:
                return None  # a bare namespace package: no source to read
            return Located(module, path, top_root or path.parent, is_pkg)
        if path is not None and not is_pkg:
            return None  # `a.py` is not a package, so `a.b` does not exist
        dirs = [path.parent] if path is not None else portions
    return None


def import_extension(module: str, roots: list[Path]) -> None:
    """Import `module`, saying so on stderr when its code runs (rank 0 only).

    A module that only the extra roots (the `.l3m` file's folder, the project root) provide is
    found by appending that root to `sys.path`, as `lint` found it.
    """
    if module in sys.modules:
        return
    where = locate(module, roots)
    if where is not None and not any(_same(where.root, p) for p in sys.path if isinstance(p, str)):
        sys.path.append(str(where.root))
    if os.environ.get("RANK", "0") == "0":
        print(f"note: importing extension module '{module}' (runs its code)", file=sys.stderr, flush=True)
    importlib.import_module(module)


def _same(a: Path, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b or os.getcwd())

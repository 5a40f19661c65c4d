"""The run directory: where a run writes, and the record that reproduces it.

    runs/<file stem>/
      program.l3m      the source as it was, with the command-line overrides in its header (and
                       `--extension` modules declared in it)
      <imports>        every `.l3m` file it imports, at its path relative to the program (files
                       from outside its folder under `_imports/`, the import strings rewritten)
      <extensions>     the sources of the extension modules that are not installed packages
      resolved.json    the evaluated program: every node with its arguments, keys and ports,
                       the optimizer, schedule and settings (defaults filled in)
      run.json         how to run it again: overrides, files, extensions, seed, world size, the
                       l3m/torch/python versions, the git commit (and dirty flag) of the project;
                       `history`: one entry per start (resumed from which step, the settings it
                       changed, see `l3m.train.resume_changes`)
      l3m.lock         while a run trains: its owner (see `l3m.train.runlock`)
      metrics.jsonl    see `l3m.train.logging`
      ckpt/step_*/     see `l3m.train.checkpoint`
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from l3m.config import build_section
from l3m.dsl.ir import Call, Program, to_data
from l3m.train import provenance


def default_run_dir(path: str | Path) -> Path:
    return Path("runs") / Path(path).stem


def _call(call: Call | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {"type": call.type_name, "args": to_data(list(call.args)), "kwargs": to_data(dict(call.kwargs))}


def resolved(program: Program, model_order: list[str]) -> dict[str, Any]:
    """The evaluated program as JSON-able data."""
    return {
        "file": program.file,
        "overrides": list(program.overrides),
        "lets": program.lets,
        "nodes": [
            {
                "path": n.path,
                "role": n.role,
                **_call(n.call),
                "reads": {b.port or str(i): b.key for i, b in enumerate(n.reads)},
                "writes": {b.port or str(i): b.key for i, b in enumerate(n.writes)},
                **({"model": n.model, "stage": n.stage} if n.role == "block" else {}),
                **({"weight": n.weight} if n.role == "loss" else {}),
            }
            for n in sorted(program.nodes, key=lambda n: n.index)
        ],
        "model_order": model_order,
        "optimizer": _call(program.optimizer),
        "schedule": _call(program.schedule),
        "sections": {name: asdict(build_section(name, program.section(name))) for name in ("train", "mesh", "log", "data")},
        "extensions": [m for m, _ in program.extensions],
        "imports": list(program.imports),
    }


def write_program_record(run_dir: Path, program: Program, model_order: list[str], world_size: int) -> None:
    """Write `program.l3m` (with every file it imports and the extension modules' sources beside
    it), `resolved.json` and `run.json` (rank 0, when a run starts). The directory alone runs
    again: `l3m train RUN_DIR/program.l3m`, or `l3m rerun RUN_DIR` (which also applies the
    recorded command-line overrides)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    main = Path(program.file).resolve()
    overrides = list(program.overrides)
    places = _places(main, [Path(i).resolve() for i in program.imports])
    header = [
        f"# Copied by `l3m train` from {program.file}",
        "# overrides: " + (" ".join(shlex.quote(o) for o in overrides) if overrides else "(none)"),
        f"# reproduce: l3m rerun {shlex.quote(str(run_dir))}   (or: l3m train "
        f"{shlex.quote(str(run_dir / 'program.l3m'))} " + " ".join(shlex.quote(o) for o in overrides) + ")",
    ]
    cli_extensions = [m for m, span in program.extensions if span is None]
    for original, place in places.items():
        text = _rewrite_imports(original, places)
        target = run_dir / place
        target.parent.mkdir(parents=True, exist_ok=True)
        if original == main:
            text = "\n".join(header) + "\n" + _declare_extensions(text, cli_extensions)
        target.write_text(text, encoding="utf-8")
    extensions, ext_files = [], []
    for module, _ in program.extensions:
        found = provenance.extension_files(module, str(main))
        if found is None:
            extensions.append({"module": module, "copied": False, "installed": provenance.distribution(module)})
            continue
        root, files = found
        for f in files:
            dest = run_dir / os.path.relpath(f, root)
            if dest.resolve() == f.resolve():  # training the run directory's own copy
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        ext_files += files
        extensions.append({"module": module, "copied": True,
                           "files": [os.path.relpath(f, root) for f in files]})
    res = resolved(program, model_order)
    (run_dir / "resolved.json").write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    run = {
        "program": "program.l3m",
        "source": str(main),
        "files": {place: str(original) for original, place in places.items()},
        "overrides": overrides,
        "extensions": extensions,
        "seed": res["sections"]["train"].get("seed"),
        "world_size": world_size,
        "argv": sys.argv,
        "versions": {"l3m": _l3m_version(), "torch": torch.__version__, "python": sys.version.split()[0]},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "git": provenance.git_record(main.parent, [*places, *ext_files]),
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")


def _l3m_version() -> str:
    from l3m import __version__

    return __version__


def _places(main: Path, imports: list[Path]) -> dict[Path, str]:
    """Where each source file goes in the run directory: the program as `program.l3m`, an import
    at its path relative to the program's folder, or under `_imports/` when it lies outside it
    (its import strings are then rewritten to the new place)."""
    places = {main: "program.l3m"}
    outside = [f for f in imports if not f.is_relative_to(main.parent)]
    root = Path(os.path.commonpath([str(f.parent) for f in outside])) if outside else None
    for f in imports:
        if f in places:
            continue
        places[f] = (f.relative_to(main.parent).as_posix() if f.is_relative_to(main.parent)
                     else "_imports/" + f.relative_to(root).as_posix())
    return places


def _rewrite_imports(path: Path, places: dict[Path, str]) -> str:
    """The text of `path` with each import string pointing at the imported file's place in the run
    directory (unchanged where the relative path is the same)."""
    from l3m.dsl.parser import parse

    text = path.read_text(encoding="utf-8")
    try:
        module = parse(text, str(path))
    except Exception:  # noqa: BLE001 - it compiled a moment ago; copy it as it is rather than fail the run
        return text
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    edits = []
    here = PurePosixPath(places[path]).parent
    for imp in module.imports:
        target = Path(os.path.normpath(path.parent / imp.path)).resolve()
        if target not in places or imp.span.line - 1 >= len(starts):
            continue
        new = os.path.relpath(places[target], here.as_posix() or ".")
        at = starts[imp.span.line - 1] + imp.span.col - 1
        close = text.find('"', at + 1)
        if text[at:at + 1] != '"' or close < 0 or "\\" in text[at:close] or text[at + 1:close] == new:
            continue
        edits.append((at, close + 1, json.dumps(Path(new).as_posix())))
    for a, b, literal in sorted(edits, reverse=True):
        text = text[:a] + literal + text[b:]
    return text


def _declare_extensions(text: str, modules: list[str]) -> str:
    """Declare the command line's `--extension` modules in the copy itself, after its version line."""
    if not modules:
        return text
    lines = text.splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.strip().startswith("l3m ")), 0)
    decl = "".join(f"extension {json.dumps(m)}  # given as --extension\n" for m in modules)
    return "".join(lines[:at]) + decl + "".join(lines[at:])


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The `history` of `run.json`: one entry per start of the run (read before the record is rewritten)."""
    try:
        history = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []


def append_history(run_dir: Path, history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Write `history + [entry]` into `run.json`: when each start began, what it resumed from and
    which settings it changed (so the record says which values were in effect when)."""
    path = run_dir / "run.json"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        run = {}
    run["history"] = [*history, entry]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


class NotARunRecord(ValueError):
    """A directory that holds no usable run record (`run.json` and `program.l3m`)."""


def read_run_record(run_dir: Path) -> tuple[Path, list[str], int | None]:
    """(the program copy, the recorded overrides, the recorded world size) of a run directory,
    for `l3m rerun`. `run.json` is read as data only: a regular file of bounded size whose
    overrides are strings."""
    record, program = run_dir / "run.json", run_dir / "program.l3m"
    if not run_dir.is_dir():
        raise NotARunRecord(f"{run_dir} is not a directory")
    if not (record.is_file() and not record.is_symlink()) or not program.is_file():
        raise NotARunRecord(f"{run_dir} is not a run directory of l3m (it has no run.json and program.l3m)")
    if record.stat().st_size > 1 << 20:
        raise NotARunRecord(f"{record} is larger than l3m ever writes it")
    try:
        run = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise NotARunRecord(f"{record} is not readable JSON ({type(e).__name__})") from None
    overrides = run.get("overrides", []) if isinstance(run, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise NotARunRecord(f"{record}: 'overrides' is not a list of PATH=VALUE strings")
    world = run.get("world_size")
    return program, overrides, world if isinstance(world, int) else None

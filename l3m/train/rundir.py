"""The run directory: where a run writes, and the record that reproduces it.

    runs/<file stem>/
      program.l3m      the source as it was, with the command-line overrides in its header
      resolved.json    the evaluated program: every node with its arguments, keys and ports,
                       the optimizer, schedule and settings (defaults filled in)
      run.json         how to run it again: overrides, imports, extensions, world size, versions
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
from pathlib import Path
from typing import Any

import torch

from l3m.config import build_section
from l3m.dsl.ir import Call, Program


def default_run_dir(path: str | Path) -> Path:
    return Path("runs") / Path(path).stem


def _call(call: Call | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {"type": call.type_name, "args": list(call.args), "kwargs": dict(call.kwargs)}


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
        "sections": {name: asdict(build_section(name, program.section(name))) for name in ("train", "mesh", "log")},
        "extensions": [m for m, _ in program.extensions],
        "imports": list(program.imports),
    }


def write_program_record(run_dir: Path, program: Program, model_order: list[str], world_size: int) -> None:
    """Write `program.l3m`, `resolved.json` and `run.json` (rank 0, at the start of every run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    source = Path(program.file).read_text(encoding="utf-8")
    overrides = list(program.overrides)
    header = [
        f"# Copied by `l3m train` from {program.file}",
        "# overrides: " + (" ".join(shlex.quote(o) for o in overrides) if overrides else "(none)"),
        f"# reproduce: l3m train {shlex.quote(str(run_dir / 'program.l3m'))} "
        + " ".join(shlex.quote(o) for o in overrides),
    ]
    main_dir = Path(program.file).resolve().parent
    for imported in program.imports:  # copied beside program.l3m so that its relative imports still work
        rel = Path(os.path.relpath(Path(imported).resolve(), main_dir))
        if rel.parts and rel.parts[0] != ".." and not rel.is_absolute():
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(imported, run_dir / rel)
        else:
            header.append(f"# import outside the file's directory, not copied: {imported}")
    (run_dir / "program.l3m").write_text("\n".join(header) + "\n" + source, encoding="utf-8")
    (run_dir / "resolved.json").write_text(json.dumps(resolved(program, model_order), indent=2, default=str) + "\n",
                                           encoding="utf-8")
    run = {
        "source": str(Path(program.file).resolve()),
        "overrides": overrides,
        "extensions": [m for m, _ in program.extensions],
        "world_size": world_size,
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")

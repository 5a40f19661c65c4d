"""Does the program's mesh fit the processes a launch asks for? The check of `l3m lint --world-size`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class MeshCheck:
    """`exit_code` 0 (fits), 1 (the file has errors whatever the world size: `diagnostics` says which) or 2
    (unreadable, or only the world size does not fit: `message` is one line)."""

    exit_code: int
    message: str = ""
    compiled: object | None = None


def check_mesh(path: str, overrides: list[str], world_size: int, extensions: tuple[str, ...] = ()) -> MeshCheck:
    from l3m.cli import _compile, _unreadable

    if not Path(path).is_file():
        return MeshCheck(2, f"no such file: {path}")
    compiled = _compile(path, overrides, world_size, extensions)
    if compiled.ok:
        return MeshCheck(0, compiled=compiled)
    if _unreadable(compiled):
        return MeshCheck(2, f"cannot read {path}", compiled)
    alone = _compile(path, overrides, None, extensions)
    if not alone.ok:
        return MeshCheck(1, f"{path} has errors (see l3m lint {path})", alone)
    first = compiled.errors[0]
    return MeshCheck(2, f"{path} does not fit {world_size} process(es): {first.message} [{first.code}]", compiled)

"""Where a run's code came from: the git commit of the project folder, and extension sources.

git is never run: a project's `.git/config` can name programs for git to run (`core.fsmonitor`,
filter drivers), so the commit is read from `.git/HEAD` and the refs, and "dirty" is worked out
from the index: a file the run read (the program, its imports, extension sources) whose content
differs from what the index holds for it, or that the index does not hold, makes the record
dirty. (Changes staged but not committed are not seen; anything unexpected gives `None`.)
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import sysconfig
from pathlib import Path
from typing import Any

_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?\Z")
_MAX = 1 << 26  # refs and indexes of real repositories are far smaller


def _read(path: Path, limit: int = _MAX) -> bytes | None:
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def find_git(start: Path) -> tuple[Path, Path] | None:
    """(work tree, git directory) of the repository holding `start`, if any."""
    for d in (start, *start.parents):
        dot = d / ".git"
        if dot.is_dir():
            return d, dot
        if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = (_read(dot, 4096) or b"").decode("utf-8", "replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                return d, (target if target.is_absolute() else (d / target)).resolve()
            return None
    return None


def _ref(git_dir: Path, name: str) -> str | None:
    common = git_dir
    text = (_read(git_dir / "commondir", 4096) or b"").decode("utf-8", "replace").strip()
    if text:
        common = (git_dir / text).resolve()
    if not name.startswith("refs/") or ".." in name:
        return None
    for base in (git_dir, common):
        raw = _read(base / name, 4096)
        if raw is not None:
            value = raw.decode("ascii", "replace").strip()
            return value if _SHA.match(value) else None
    packed = _read(common / "packed-refs")
    for line in (packed or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2 and parts[1].strip() == name and _SHA.match(parts[0]):
            return parts[0]
    return None


def head_commit(git_dir: Path) -> tuple[str | None, str | None]:
    """(commit, branch) of HEAD; branch None when detached."""
    head = (_read(git_dir / "HEAD", 4096) or b"").decode("utf-8", "replace").strip()
    if head.startswith("ref:"):
        name = head[4:].strip()
        return _ref(git_dir, name), name.removeprefix("refs/heads/")
    return (head, None) if _SHA.match(head) else (None, None)


def index_entries(git_dir: Path) -> dict[str, str] | None:
    """{path: blob sha1} of the index (versions 2 and 3); None when it cannot be read so."""
    data = _read(git_dir / "index")
    if data is None or len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3):
        return None
    out, pos = {}, 12
    try:
        for _ in range(count):
            sha = data[pos + 40:pos + 60].hex()
            (flags,) = struct.unpack(">H", data[pos + 60:pos + 62])
            start = pos + 62 + (2 if version == 3 and flags & 0x4000 else 0)
            end = data.index(b"\0", start)
            out[data[start:end].decode("utf-8", "surrogateescape")] = sha
            pos += ((end - pos) // 8 + 1) * 8  # entries are NUL-padded to a multiple of 8 bytes
    except (ValueError, struct.error):
        return None
    return out


def _blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def git_record(start: Path, files: list[Path]) -> dict[str, Any] | None:
    """The commit, branch and dirty flag of the repository holding `start`; None outside one."""
    found = find_git(start.resolve())
    if found is None:
        return None
    tree, git_dir = found
    commit, branch = head_commit(git_dir)
    index = index_entries(git_dir)
    changed: list[str] | None = None
    if index is not None:
        changed = []
        for f in files:
            try:
                rel = f.resolve().relative_to(tree.resolve()).as_posix()
            except ValueError:
                continue  # not in this repository
            try:
                if index.get(rel) != _blob_sha1(f):
                    changed.append(rel)
            except OSError:
                changed.append(rel)
    return {"folder": str(tree), "commit": commit, "branch": branch,
            "dirty": None if changed is None else bool(changed), "changed_files": changed}


def installed(path: Path) -> bool:
    """Whether `path` lies in the interpreter's installed packages (recorded by version, not copied)."""
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(r) + os.sep) for r in roots)


def distribution(module: str) -> str | None:
    """`name version` of the installed distribution (editable ones too) that provides `module`."""
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get(module.split(".")[0], [])
        return f"{names[0]} {metadata.version(names[0])}" if names else None
    except Exception:  # noqa: BLE001 - broken metadata: treat the module as the project's own
        return None


def extension_files(module: str, l3m_file: str) -> tuple[Path, list[Path]] | None:
    """(search root, the source files) of a user extension module: the module file, or every
    `.py` file of its top-level package; None when it is installed or not found as source."""
    from l3m.dsl.ext_locate import locate, search_roots

    where = locate(module, search_roots(l3m_file))
    if where is None or installed(where.path) or distribution(module) is not None:
        return None
    top = where.root / module.split(".")[0]
    if top.is_dir():
        files = sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts and p.is_file()
                       and p.stat().st_size <= 4 << 20)
    else:
        files = [where.path]
    return where.root, files

"""Atomic, verified checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is a directory `ckpt/step_000100/` holding:

- the DCP files (`.metadata`, `__<rank>_0.distcp`): every *tensor* of the run's state (model,
  criterion, optimizer), sharded as the model is, so a run can resume on another mesh;
- `state.json`: everything else (step, schedule, grad scaler, loader position, the optimizer's
  hyperparameters) as JSON, with the tensors replaced by their DCP keys; no pickles, so loading
  a checkpoint never runs code from it;
- `rank_<r>.json`: each rank's random-number generator states;
- `COMPLETE`: a manifest (size and SHA-256 of every other file), written last.

Opening one never runs code from it: the manifest is checked before any payload is read, the
DCP `.metadata` goes through a restricted unpickler and tensors are read with
`weights_only=True` (see `safe_dcp`). A checkpoint that is damaged (missing marker, a missing or
changed file) is reported and, when the newest of a run, skipped; one that l3m cannot have
written (a stray file, a symlink, a refused pickle) raises `UnsafeCheckpoint` and is never
skipped silently.

It is written into `step_000100.tmp/` and renamed only after the manifest is on disk, so a
killed run leaves either a whole checkpoint or a `.tmp` directory that is ignored; a write that
fails (a full disk) removes its `.tmp` directory and raises `CheckpointWriteError`, the earlier
checkpoints untouched. On resume the
newest checkpoint whose manifest matches its files is used; damaged ones are reported and
skipped. The last `keep` checkpoints are kept.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from l3m.durable import fsync_dir
from l3m.train import faults
from l3m.train.preempt import critical_section
from l3m.train.safe_dcp import (
    SafeFileSystemReader,
    TensorsOnlyPlanner,
    UnsafeCheckpoint,
    check_tree,
    read_metadata,
    refusal_reason,
)

MARKER = "COMPLETE"
STATE_FILE = "state.json"
FORMAT = "l3m-checkpoint/1"
_STEP_DIR = re.compile(r"step_(\d+)\Z")
_TENSOR = "__dcp__"
_ITEMS = "__items__"
_TUPLE = "__tuple__"
log = logging.getLogger(__name__)  # what `report` says when the caller passes none (a damaged checkpoint)


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


# -- splitting a state into DCP tensors and JSON ----------------------------------------------


def split_state(obj: Any, path: tuple[str, ...] = ()) -> tuple[Any, dict[str, torch.Tensor]]:
    """`obj` as JSON-able data with each tensor replaced by `{"__dcp__": key}`, and those tensors.

    Keys are the '/'-joined paths to the tensors, the same on every rank, so DCP can match
    shards. Tuples and non-string dict keys are tagged so `join_state` restores them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, p: tuple[str, ...]) -> Any:
        if isinstance(x, torch.Tensor):
            key = "/".join(p)
            tensors[key] = x
            return {_TENSOR: key}
        if isinstance(x, Mapping):
            if all(isinstance(k, str) for k in x):
                return {k: walk(v, (*p, k)) for k, v in x.items()}
            return {_ITEMS: [[k, walk(v, (*p, str(k)))] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, (*p, str(i))) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, (*p, str(i))) for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot checkpoint {type(x).__name__} at {'/'.join(p) or 'the root'}: "
                        "only tensors, numbers, strings, lists and dicts are saved")

    return walk(obj, path), tensors


def join_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of `split_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        if set(skeleton) == {_ITEMS}:
            return {k: join_state(v, tensors) for k, v in skeleton[_ITEMS]}
        if set(skeleton) == {_TUPLE}:
            return tuple(join_state(v, tensors) for v in skeleton[_TUPLE])
        return {k: join_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    return skeleton


def tensor_keys(skeleton: Any) -> list[str]:
    out: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                out.append(x[_TENSOR])
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(skeleton)
    return out


# -- random number generators -----------------------------------------------------------------


def _tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _b64_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from (Python, NumPy, torch CPU and CUDA), as JSON."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _tensor_b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_tensor_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_b64_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_b64_tensor(s) for s in state["cuda"]])


# -- files ------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, step: int) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    manifest = {
        "format": FORMAT,
        "step": step,
        "files": {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                  for p in files},
    }
    _write_json(directory / MARKER, manifest)


def verify(directory: Path) -> str | None:
    """None when the checkpoint is whole; otherwise why it cannot be used (damage: a missing
    marker, a missing or changed file). Raises `UnsafeCheckpoint` for what damage cannot explain:
    a malformed manifest, files it does not list, symlinks, a refused `.metadata`."""
    marker = directory / MARKER
    if marker.is_symlink():
        raise UnsafeCheckpoint(f"{MARKER} is a symlink")
    if not marker.is_file():
        return f"no {MARKER} marker (the run stopped while writing it)"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MARKER} marker ({e})"
    check_tree(directory, files, MARKER)
    for name, info in files.items():
        if not (isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(info.get("sha256"), str)):
            raise UnsafeCheckpoint(f"the {MARKER} manifest entry of {name} is malformed")
        p = directory / name
        if not p.is_file():
            return f"file {name} is missing"
        if p.stat().st_size != info["size"]:
            return f"file {name} has {p.stat().st_size} bytes, the manifest says {info['size']}"
        if _sha256(p) != info["sha256"]:
            return f"file {name} does not match its checksum"
    for required in (STATE_FILE, ".metadata"):
        if required not in files:
            return f"the manifest lists no {required}"
    for name in files:
        if name.endswith(".json"):
            try:
                json.loads((directory / name).read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as e:
                raise UnsafeCheckpoint(f"{name} is not valid JSON ({type(e).__name__})") from None
    read_metadata(directory)
    return None


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it assumes a single process whenever there is no process group; that is the
    intent here, so the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        yield


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


# -- the manager ------------------------------------------------------------------------------


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (a full disk, a quota, an I/O error); the partial files
    are removed and the earlier checkpoints are untouched."""


def _os_error(e: BaseException) -> OSError | None:
    """The OS error behind a failed write, also when DCP wrapped it in a `CheckpointException`."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, CheckpointException):
        for f in e.failures.values():
            cause = f[0] if isinstance(f, tuple) else f
            if isinstance(cause, OSError):
                return cause
    return None


@dataclass
class Found:
    step: int
    path: Path


class CheckpointManager:
    """Saves, lists, verifies and prunes the checkpoints under `root` (`<run>/ckpt`).

    Every rank calls `save` and `load` (DCP is collective); only rank 0 writes the manifest,
    renames and prunes. `report` receives one line per notable event (a damaged checkpoint).
    """

    def __init__(self, root: str | Path, keep: int = 2, *, rank: int = 0,
                 report: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.keep, self.rank, self.report = keep, rank, report or log.warning

    # listing

    def complete(self) -> list[Found]:
        """Checkpoint directories with a marker, newest first (not yet verified)."""
        out = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                m = _STEP_DIR.match(p.name)
                if m and p.is_dir() and (p / MARKER).is_file():
                    out.append(Found(int(m.group(1)), p))
        return sorted(out, key=lambda f: f.step, reverse=True)

    def has_any(self) -> bool:
        return self.root.is_dir() and any(_STEP_DIR.match(p.name) for p in self.root.iterdir())

    def latest_valid(self) -> Found | None:
        """The newest checkpoint that verifies, reporting every damaged or partial one skipped."""
        choice: Found | None = None
        refused: str | None = None  # an unsafe checkpoint stops every rank, not just rank 0
        if self.rank == 0:
            try:
                choice = self._newest_valid()
            except UnsafeCheckpoint as e:
                refused = str(e)
        if _is_dist():
            box = [(choice, refused)]
            dist.broadcast_object_list(box, src=0)
            choice, refused = box[0]
        if refused is not None:
            raise UnsafeCheckpoint(refused)
        return choice

    def _newest_valid(self) -> Found | None:
        for p in sorted(self.root.glob("step_*"), reverse=True) if self.root.is_dir() else []:
            if p.is_dir() and _STEP_DIR.match(p.name) and not (p / MARKER).exists():
                self.report(f"checkpoint {p} is incomplete (no {MARKER} marker); ignoring it")
        for found in self.complete():
            if found.path.is_symlink():
                raise UnsafeCheckpoint(f"checkpoint {found.path} is a symlink; refusing to load it")
            try:
                problem = verify(found.path)
            except UnsafeCheckpoint as e:
                raise UnsafeCheckpoint(f"checkpoint {found.path} was refused: {e}") from None
            if problem is None:
                return found
            self.report(f"checkpoint {found.path} is damaged: {problem}; trying the previous one")
        return None

    def set_aside_after(self, step: int) -> list[Path]:
        """Rename every checkpoint directory past `step` (damaged or partial ones the run skipped)
        to `<name>.skipped`, so that it neither counts towards `keep` nor is mistaken for a
        checkpoint later; the run recomputes those steps (rank 0)."""
        moved: list[Path] = []
        if self.rank != 0 or not self.root.is_dir():
            return moved
        for p in sorted(self.root.iterdir()):
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and int(m.group(1)) > step:
                target = p.with_name(p.name + ".skipped")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(p, target)
                moved.append(target)
        return moved

    def recover_renames(self) -> None:
        """Put back a checkpoint a run was killed while replacing (between the two renames of a
        step saved again), before anything looks for the newest one (rank 0)."""
        if self.rank != 0 or not self.root.is_dir():
            return
        for p in self.root.glob("*.old.tmp"):
            final = p.with_name(p.name[: -len(".old.tmp")])
            if not final.exists():
                os.replace(p, final)

    def clean_stale(self) -> None:
        """Remove `.tmp` directories left by runs that were killed while saving (rank 0)."""
        if self.rank != 0 or not self.root.is_dir():
            return
        self.recover_renames()
        for p in self.root.glob("*.tmp"):
            shutil.rmtree(p, ignore_errors=True)

    # saving

    def save(self, step: int, state: Mapping[str, Any], rank_state: Mapping[str, Any]) -> Path:
        """Write `state` (shared by all ranks) and `rank_state` (this rank's own) atomically."""
        final = self.root / step_dir_name(step)
        tmp = self.root / (final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        try:
            self._write(step, tmp, state, rank_state)
        except (OSError, CheckpointException) as e:
            cause = _os_error(e)
            if cause is None:
                raise
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # give back the space the partial files took
            raise CheckpointWriteError(self._write_failure(final, cause)) from None
        if self.rank == 0:
            with critical_section():  # a second Ctrl-C waits for these renames
                if final.exists():  # the same step saved again (a run resumed from an earlier one)
                    old = final.with_name(final.name + ".old.tmp")
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
            fsync_dir(self.root)
            self.prune()
        self._barrier()
        return final

    def _write(self, step: int, tmp: Path, state: Mapping[str, Any], rank_state: Mapping[str, Any]) -> None:
        """Every file of the checkpoint into `tmp`, the manifest last."""
        skeleton, tensors = split_state(dict(state))
        pipeline = getattr(self, "pipeline_group", None)  # mesh.pp > 1: each rank holds its stages' tensors
        if pipeline is not None:
            from l3m.train.checkpoint_pp import gather_skeleton

            skeleton = gather_skeleton(skeleton, pipeline, self.parameter_order)
        with _quiet_single_process():
            dcp.save(tensors, checkpoint_id=str(tmp), no_dist=not _is_dist())
        faults.during_checkpoint(step, self.rank, tmp)
        _write_json(tmp / f"rank_{self.rank}.json", dict(rank_state))
        if self.rank == 0:
            world = dist.get_world_size() if _is_dist() else 1
            _write_json(tmp / STATE_FILE, {"format": FORMAT, "step": step, "world_size": world,
                                           "state": skeleton})
        self._barrier()
        if self.rank == 0:
            write_manifest(tmp, step)
            fsync_dir(tmp)

    def _write_failure(self, final: Path, cause: OSError) -> str:
        """One line: what could not be written, why, and what is left to resume from."""
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            why, where = "the disk is full" + (" (quota)" if cause.errno == errno.EDQUOT else ""), f" in {self.root}"
        else:
            why, where = cause.strerror or str(cause), f" ({cause.filename})" if cause.filename else ""
        earlier = [f for f in self.complete() if f.path != final] if self.rank == 0 else []
        kept = (f"the previous checkpoint {earlier[0].path} is intact; free some space and run again with --resume"
                if earlier else "there is no earlier checkpoint; free some space and run again")
        return f"cannot write checkpoint {final.name}: {why}{where}; {kept}"

    def prune(self) -> None:
        """Keep the newest `keep` complete checkpoints (keep <= 0: all)."""
        if self.keep <= 0:
            return
        for found in self.complete()[self.keep:]:
            shutil.rmtree(found.path, ignore_errors=True)

    @staticmethod
    def _barrier() -> None:
        if _is_dist():
            dist.barrier()


# -- loading ----------------------------------------------------------------------------------


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def read_rank_state(path: Path, rank: int) -> dict[str, Any] | None:
    p = path / f"rank_{rank}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def _dcp_load(target: dict[str, torch.Tensor], path: Path, no_dist: bool) -> None:
    """`dcp.load` through the restricted reader; its failures (a BaseException in DCP) as
    `UnsafeCheckpoint` or `ValueError`, so that they are reported like any bad checkpoint."""
    try:
        with _quiet_single_process():
            dcp.load(target, storage_reader=SafeFileSystemReader(str(path)), planner=TensorsOnlyPlanner(),  # safe: restricted metadata unpickler, tensors only, manifest verified first
                     no_dist=no_dist)
    except CheckpointException as e:
        causes = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        for cause in causes:
            if isinstance(cause, UnsafeCheckpoint):
                raise UnsafeCheckpoint(str(cause)) from None
        first = causes[0] if causes else e
        if isinstance(first, pickle.UnpicklingError):
            raise UnsafeCheckpoint(f"checkpoint {path}: a tensor file was refused: {refusal_reason(first)}") from None
        raise ValueError(f"cannot read the tensors of checkpoint {path}: {type(first).__name__}: {first}") from None


def load_tensors(path: Path, keys: list[str], live: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `keys`, loaded into the `live` tensors where there are any
    (so sharded tensors are loaded shard by shard) and into fresh CPU tensors otherwise.
    `path` should have passed `verify`; the reading itself never unpickles beyond DCP's records."""
    meta = read_metadata(path).state_dict_metadata
    missing = [k for k in keys if k not in meta]
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    target: dict[str, torch.Tensor] = {}
    for k in keys:
        md = meta[k]
        if k in live and tuple(live[k].shape) == tuple(md.size):
            target[k] = live[k]
        else:
            target[k] = torch.empty(tuple(md.size), dtype=md.properties.dtype)
    _dcp_load(target, path, no_dist=not _is_dist())
    return target


def load_model_tensors(path: Path, prefix: str = "model/") -> dict[str, torch.Tensor]:
    """Every tensor under `prefix` as a full CPU tensor (names without the prefix), on one process."""
    meta = read_metadata(path).state_dict_metadata
    target = {k: torch.empty(tuple(md.size), dtype=md.properties.dtype)
              for k, md in meta.items() if k.startswith(prefix) and hasattr(md, "size")}
    if not target:
        raise KeyError(f"{path} holds no tensors under {prefix!r}")
    _dcp_load(target, path, no_dist=True)
    return {k[len(prefix):]: v for k, v in target.items()}


def resolve_checkpoint(path: str | Path, report: Callable[[str], None] | None = None) -> Path:
    """A checkpoint directory from a run directory, its `ckpt/` or one `step_*` directory.

    For a run, the newest checkpoint that verifies; a named step directory must verify itself.
    Raises FileNotFoundError when there is none, ValueError when the named one is damaged.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such checkpoint or run directory: {p}")
    if (p / MARKER).exists() or _STEP_DIR.match(p.name):
        try:
            problem = verify(p)
        except UnsafeCheckpoint as e:
            raise UnsafeCheckpoint(f"checkpoint {p} was refused: {e}") from None
        if problem:
            raise ValueError(f"checkpoint {p} cannot be used: {problem}")
        return p
    root = p / "ckpt" if (p / "ckpt").is_dir() else p
    found = CheckpointManager(root, rank=0, report=report).latest_valid()
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint under {root}")
    return found.path

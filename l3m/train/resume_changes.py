"""What a resumed run changes compared with the run that wrote its checkpoint.

Every checkpoint stores the resolved program it was trained with (`program` in its state; for
checkpoints written before that, the run directory's `resolved.json` stands in). On resume the
new program is compared with it, setting by setting, and each difference is one of:

- applied: optimizer hyper-parameters, the schedule, `train` settings such as `steps`, the
  evaluation, checkpoint and log intervals, `log`, the data section's settings (`on_error`), losses
  and metrics, evaluation sources, the
  mesh (checkpoints reshard to any mesh that fits the model);
- model: a model block's arguments or the model's order; applied when the checkpoint's tensors
  still fit (a changed dropout or a sleep), otherwise the resume fails with an error naming them
  (a changed width: the shapes are what decides, and loading checks every one);
- structural: the `train` data source (its order, global batch and files), the seed (data
  order), `freeze`, the optimizer's type or its parameter groups. A structural change refuses the resume
  with an error naming the settings, unless the user passes `--allow-changes` (the run then goes
  on from the checkpoint with the new program, if its tensors still fit);
- ignored: settings that only a fresh run reads (`train.init_*`).

The differences are printed at the start and appended to `run.json` (`history`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# grad_accum and micro_batch only split the global batch (the train source's batch_size) differently.
_TRAIN_STRUCTURAL = {"seed": "data order", "freeze": "trainable parameters", "trainable": "trainable parameters"}
_TRAIN_IGNORED = ("init_from", "init_include", "init_exclude", "init_rename")
TRAIN_SOURCE_PATH = "data.train"


@dataclass
class Change:
    setting: str
    old: Any
    new: Any
    kind: str  # "applied", "model", "structural" or "ignored"
    why: str = ""

    def text(self) -> str:
        return f"{self.setting}: {_show(self.old)} -> {_show(self.new)}" + (f" ({self.why})" if self.why else "")

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


_ABSENT = object()


def _show(v: Any) -> str:
    if v is _ABSENT or v is None:
        return "(default)" if v is _ABSENT else "none"
    return json.dumps(v, default=str)


def jsonable(x: Any) -> Any:
    """`x` as plain JSON data (what a checkpoint's state can hold)."""
    return json.loads(json.dumps(x, default=str))


def _dict_changes(prefix: str, old: dict, new: dict, kind: str, why: str = "") -> list[Change]:
    out = []
    for k in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a != b:
            out.append(Change(f"{prefix}{k}", None if a is _ABSENT else a, None if b is _ABSENT else b, kind, why))
    return out


def _call_changes(name: str, old: dict | None, new: dict | None, type_kind: str) -> list[Change]:
    if old == new:
        return []
    if old is None or new is None or old.get("type") != new.get("type"):
        show = lambda c: c.get("type") if c else None  # noqa: E731
        why = "another optimizer" if name == "optimizer" else ""
        return [Change(name, show(old), show(new), type_kind, why)]
    out = _dict_changes(f"{name}.", old.get("kwargs") or {}, new.get("kwargs") or {}, "applied")
    if old.get("args") != new.get("args"):
        out.append(Change(f"{name} (positional arguments)", old.get("args"), new.get("args"), "applied"))
    return out


def _node_kind(node: dict) -> tuple[str, str]:
    role = node.get("role")
    if role in ("block",):
        return "model", ""
    if role == "source" and node.get("path") == TRAIN_SOURCE_PATH:
        return "structural", "training data"
    return "applied", ""


def _node_changes(old: list[dict], new: list[dict]) -> list[Change]:
    a = {n["path"]: n for n in old}
    b = {n["path"]: n for n in new}
    out: list[Change] = []
    for path in [*a, *(p for p in b if p not in a)]:
        x, y = a.get(path), b.get(path)
        if x == y:
            continue
        kind, why = _node_kind(x or y)
        if x is None or y is None:
            out.append(Change(path, x and x.get("type"), y and y.get("type"), kind,
                              ("added" if x is None else "removed") + (f", {why}" if why else "")))
            continue
        for field in ("type", "args", "model", "stage", "weight"):
            if x.get(field) != y.get(field):
                out.append(Change(f"{path} {field}", x.get(field), y.get(field), kind, why))
        out += _dict_changes(f"{path}.", x.get("kwargs") or {}, y.get("kwargs") or {}, kind, why)
        for field in ("reads", "writes"):
            if x.get(field) != y.get(field):
                out.append(Change(f"{path} {field}", x.get(field), y.get(field), kind, why))
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """The differences between two resolved programs (`l3m.train.rundir.resolved`)."""
    old, new = jsonable(old), jsonable(new)
    out = _node_changes(old.get("nodes", []), new.get("nodes", []))
    if old.get("model_order") != new.get("model_order"):
        out.append(Change("model order", old.get("model_order"), new.get("model_order"), "model"))
    out += _call_changes("optimizer", old.get("optimizer"), new.get("optimizer"), "structural")
    out += _call_changes("schedule", old.get("schedule"), new.get("schedule"), "applied")
    sa, sb = old.get("sections", {}), new.get("sections", {})
    for c in _dict_changes("train.", sa.get("train", {}), sb.get("train", {}), "applied"):
        key = c.setting.split(".", 1)[1]
        if key in _TRAIN_STRUCTURAL:
            c.kind, c.why = "structural", _TRAIN_STRUCTURAL[key]
        elif key in _TRAIN_IGNORED:
            c.kind, c.why = "ignored", "only read by a fresh run"
        out.append(c)
    out += _dict_changes("mesh.", sa.get("mesh", {}), sb.get("mesh", {}), "applied", "resharded")
    out += _dict_changes("log.", sa.get("log", {}), sb.get("log", {}), "applied")
    out += _dict_changes("data.", sa.get("data", {}), sb.get("data", {}), "applied")  # on_error, ...
    return out


def group_layout(param_groups: list[dict[str, Any]]) -> list[list[str]]:
    """The parameter names of each optimizer group (what must match to load optimizer state)."""
    return [[str(p) for p in g.get("params", [])] for g in param_groups]


HYPER_SKIP = ("params", "param_names", "lr")


def hyper_parameters(param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group's settings but its parameters and its current (scheduled) `lr`."""
    return [{k: v for k, v in g.items() if k not in HYPER_SKIP} for g in param_groups]


class ResumeRefused(ValueError):
    """A resume that would change a structural setting (exit code 1)."""


def saved_program(checkpoint: Path, run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The resolved program the checkpoint was trained with, and where it was read from."""
    from l3m.train.checkpoint import read_state

    program = read_state(checkpoint).get("state", {}).get("program")
    if isinstance(program, dict):
        return program, str(checkpoint)
    try:  # a checkpoint from before programs were stored in them: the run's last record
        return json.loads((run_dir / "resolved.json").read_text(encoding="utf-8")), str(run_dir / "resolved.json")
    except (OSError, ValueError):
        return None, ""


def check_resume(checkpoint: Path, run_dir: Path, program: dict[str, Any], allow: bool) -> list[Change]:
    """What resuming from `checkpoint` with `program` changes; raises `ResumeRefused` for a
    structural change unless `allow`."""
    old, _ = saved_program(checkpoint, run_dir)
    if old is None:
        return []
    changes = compare(old, program)
    structural = [c for c in changes if c.kind == "structural"]
    if structural and not allow:
        listed = "; ".join(c.text() for c in structural[:6]) + ("; ..." if len(structural) > 6 else "")
        raise ResumeRefused(
            f"checkpoint {checkpoint} does not fit this program: it changes {listed} since the checkpoint "
            "(pass --allow-changes to resume anyway, --no-resume to start afresh, or train into another --output)")
    return changes


def mismatch_message(checkpoint: Path, error: Exception, changes: list[Change]) -> str:
    """One line for a checkpoint whose tensors do not fit: the model settings that changed, if any."""
    model = [c for c in changes if c.kind == "model" or c.setting.startswith("mesh.")]
    cause = str(error).split("\n")[0]
    if not model:
        # the optimizer's groups follow its settings (weight_decay, no_decay, ...) and `freeze`: name them
        regroup = [c for c in changes if c.setting.startswith("optimizer") or c.setting == "train.freeze"]
        named = "; ".join(c.text() for c in regroup[:6]) + ("; ..." if len(regroup) > 6 else "")
        hint = f"; changed since the checkpoint: {named}" if regroup else ""
        return f"{cause}{hint} (train into another --output, or pass --no-resume to start afresh)"
    listed = "; ".join(c.text() for c in model[:6]) + ("; ..." if len(model) > 6 else "")
    return (f"checkpoint {checkpoint} does not fit this program: the model or mesh changed since the checkpoint "
            f"({listed}); train into another --output, or pass --no-resume to start afresh")

"""Weights in and out: a consolidated safetensors export of a checkpoint, and pretrained loading.

Export reads only the model's tensors from a (possibly sharded) DCP checkpoint and writes one
`.safetensors` file keyed by the model's parameter names, loadable anywhere without l3m.

Pretrained loading takes a `.safetensors` file, a torch file (read with `weights_only=True`,
never unpickling code) or an l3m checkpoint, keeps the tensors whose *file* names match the
`include` globs and none of the `exclude` globs, renames them by prefix maps
(`{"encoder.": "vit.trunk."}`), and loads them into a model, reporting what is missing, unexpected
or of the wrong shape; strict loading fails on any of those.
"""

from __future__ import annotations

import fnmatch
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from l3m.durable import atomic_output
from l3m.model.naming import missing_model_prefix, rename_fix, root_of
from l3m.train.checkpoint import load_model_tensors, read_state, resolve_checkpoint
from l3m.train.safe_dcp import UnsafeCheckpoint, check_stored, refusal_reason


def export_checkpoint(checkpoint: str | Path, out_path: str | Path, ema: bool = False) -> dict[str, int]:
    """Write the model weights of `checkpoint` (a step directory) to `out_path` as safetensors;
    with `ema`, the weight averages of `train.ema` in place of the trained weights.

    Returns `{"tensors": n, "step": step}`. Tied weights are written under each of their names.
    """
    from safetensors.torch import save_file

    path = Path(checkpoint)
    tensors = load_model_tensors(path)
    if ema:
        from l3m.train.ema import with_averages

        tensors = with_averages(path, tensors)
    step = int(read_state(path).get("step", -1))
    with atomic_output(out_path) as tmp:  # an ordinary file's mode (safetensors alone writes 0600)
        save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(tmp),
                  metadata={"format": "pt", "producer": "l3m", "step": str(step)})
    return {"tensors": len(tensors), "step": step}


def read_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a safetensors file, a torch file or an l3m checkpoint/run."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"no such weights file or checkpoint: {p}")
    if p.is_dir():
        return load_model_tensors(resolve_checkpoint(p))
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except SafetensorError as e:  # a truncated or corrupt file: say so, do not crash
            raise ValueError(f"{p} is not a readable safetensors file (truncated or corrupt: {e})") from None
    if zipfile.is_zipfile(p):  # the format torch.save writes; older, non-zip files are read as they are
        try:
            with zipfile.ZipFile(p) as z:
                check_stored(z.infolist(), p.stat().st_size, str(p))
        except (UnsafeCheckpoint, zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{p} was refused: {e}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)  # never weights_only=False: no code from files
    except pickle.UnpicklingError as e:
        raise ValueError(f"{p} was refused: not a plain file of tensors ({refusal_reason(e)})") from None
    except (RuntimeError, EOFError) as e:  # a truncated or corrupt torch file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"{p} is not a readable torch file (truncated or corrupt: {first})") from None
    for key in ("model", "state_dict", "module"):  # common wrappings of a model's state dict
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p} does not hold a flat dictionary of tensors")
    return dict(obj)


def select_and_rename(
    weights: Mapping[str, torch.Tensor],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Filter by the file's own names (`include`: keep only matches, when given; `exclude`: drop
    matches), then rename by the longest matching prefix of `rename`."""
    prefixes = sorted((rename or {}).items(), key=lambda kv: len(kv[0]), reverse=True)
    out: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        new = name
        for old, repl in prefixes:
            if name.startswith(old):
                new = repl + name[len(old):]
                break
        if new in out:
            raise ValueError(f"two tensors are renamed to {new!r}")
        out[new] = t
    return out


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the file did not provide
    unexpected: list[str] = field(default_factory=list)  # file tensors the model does not have
    mismatched: list[str] = field(default_factory=list)  # "name: file (a, b) vs model (c, d)"
    hint: str = ""  # why nothing fits, when that is known (an old file without the model's name)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        parts = [f"loaded {len(self.loaded)} tensor(s)"]
        for what, names in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("wrong shape", self.mismatched)):
            if names:
                more = f" and {len(names) - limit} more" if len(names) > limit else ""
                parts.append(f"{what}: {', '.join(names[:limit])}{more}")
        return "; ".join(parts) + (f"; {self.hint}" if self.hint else "")


def load_pretrained(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    strict: bool = True,
) -> LoadReport:
    """Copy weights into `model` in place (see the module doc). With `strict`, any missing,
    unexpected or mis-shaped tensor raises ValueError and nothing is copied."""
    weights = source if isinstance(source, Mapping) else read_weights(source)
    weights = select_and_rename(weights, include, exclude, rename)
    own = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in own if k not in weights]
    report.unexpected = [k for k in weights if k not in own]
    for k, t in weights.items():
        if k in own and tuple(t.shape) != tuple(own[k].shape):
            report.mismatched.append(f"{k}: file {tuple(t.shape)} vs model {tuple(own[k].shape)}")
    root = root_of(own)
    old = missing_model_prefix(weights, own, root) if report.unexpected and root else None
    if old:
        report.hint = f"{old}; load it with {rename_fix(root)}, or rename its tensors with that prefix"
    if strict and not report.ok:
        raise ValueError("pretrained weights do not fit the model: " + report.summary())
    bad = {m.split(":")[0] for m in report.mismatched}
    fitting = {k: t for k, t in weights.items() if k in own and k not in bad}
    if any(isinstance(v, DTensor) for v in own.values()):
        # A sharded model (FSDP2 / TP): DCP scatters the full tensors to every rank's shards.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, fitting, options=StateDictOptions(full_state_dict=True, strict=False))
        report.loaded.extend(fitting)
        return report
    with torch.no_grad():
        for k, t in fitting.items():
            own[k].copy_(t.to(dtype=own[k].dtype))
            report.loaded.append(k)
    return report

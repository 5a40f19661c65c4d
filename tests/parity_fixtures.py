"""Loading the parity fixtures that tools/make_parity_fixtures.py wrote from the original ml-l3m, and building
l3m's twin of a shipped system at the fixture's size (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from helpers import ROOT
from safetensors.torch import load_file

import l3m
from l3m.model.build import materialize

PARITY = ROOT / "tests" / "data" / "parity"
TOLERANCE = 1e-5


@dataclass
class Fixture:
    system: str
    weights: dict[str, torch.Tensor]  # the original's state dict, the original's names
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    meta: dict

    @classmethod
    def load(cls, system: str) -> Fixture:
        folder = PARITY / system
        return cls(system, load_file(folder / "weights.safetensors"), load_file(folder / "inputs.safetensors"),
                   load_file(folder / "outputs.safetensors"), json.loads((folder / "meta.json").read_text()))


def twin(tmp_path: Path, source: str, overrides: Iterable[str] = (), name: str = "twin.l3m") -> torch.nn.Module:
    """Build (and initialise, on the CPU) the model of an l3m file written next to the shipped models, so that
    `import "../models/x.l3m"`-style paths are not needed: `source` imports by absolute path."""
    path = tmp_path / name
    path.write_text(source.replace("@MODELS@", str(ROOT / "models")))
    return materialize(l3m.load(str(path), list(overrides)).build_model(), "cpu").eval()


def rename(weights: Mapping[str, torch.Tensor], rules: Iterable[tuple[str, str]],
           root: str = "") -> dict[str, torch.Tensor]:
    """Original names -> l3m names by ordered regex rules (first match wins; `None` target drops).
    The rules write l3m names inside the model; `root` is the model's name, which starts every l3m
    parameter name (`aim.trunk.encoder...`)."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    out = {}
    for name, tensor in weights.items():
        for pattern, target in compiled:
            if pattern.fullmatch(name):
                if target is not None:
                    new = pattern.sub(target, name)
                    out[f"{root}.{new}" if root else new] = tensor
                break
        else:
            raise KeyError(f"no rule maps the original's parameter {name!r}")
    return out


def load_exact(model: torch.nn.Module, state: Mapping[str, torch.Tensor],
               transform: Callable[[dict], dict] | None = None) -> None:
    """Load every parameter and buffer that l3m has; both sides must cover each other exactly."""
    state = dict(state)
    if transform is not None:
        state = transform(state)
    mine = model.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    assert not missing and not extra, f"missing in fixture: {missing}\nnot in l3m: {extra}"
    for k, v in state.items():
        assert mine[k].shape == v.shape, f"{k}: l3m {tuple(mine[k].shape)} vs original {tuple(v.shape)}"
    model.load_state_dict(state, strict=True)


def max_abs_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs original {tuple(want.shape)}"
    return (got.double() - want.double()).abs().max().item()

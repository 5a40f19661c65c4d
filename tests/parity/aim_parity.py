"""Shared by the AIMv1 and AIMv2 parity tests: running a twin on a fixture's inputs and comparing
per-parameter init statistics with the original's (importable: tests/parity is on sys.path)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from helpers import ROOT

import l3m
from l3m.model.build import materialize
from l3m.model.criterion import build_criterion


def build_twin(tmp_path, source: str, name: str = "twin.l3m"):
    """The twin model (initialised on the CPU, eval mode) and its program's criterion, from one compile
    (as `parity_fixtures.twin` builds it: `@MODELS@` is the shipped models/ folder)."""
    path = tmp_path / name
    path.write_text(source.replace("@MODELS@", str(ROOT / "models")))
    compiled = l3m.load(str(path))
    model = materialize(compiled.build_model(), "cpu").eval()
    return model, build_criterion(compiled.program, device="cpu", metrics=False).eval()


def run(model, criterion, inputs: Mapping[str, torch.Tensor]) -> tuple[dict, torch.Tensor, dict]:
    with torch.no_grad():
        out = model(dict(inputs))
        total, logs = criterion(out)
    return out, total, logs


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_init_statistics(mine: Mapping[str, torch.Tensor], original: Mapping[str, dict],
                          groups: Mapping[str, str]) -> dict[str, int]:
    """Each parameter of the twin against the original's statistics of the same (renamed) parameter:
    constant ones (norm gains, zero biases) exactly; random ones by mean and std within sampling
    tolerance (5 standard errors of the estimates, plus slack) and by |max| (truncation and bounds).
    Returns how many parameters each named group compared (every group must have some)."""
    counted = {g: 0 for g in groups}
    for name, want in original.items():
        got = mine[name].detach().double().flatten()
        n = got.numel()
        assert n == want["numel"], f"{name}: {n} elements vs the original's {want['numel']}"
        group = next((g for g, frag in groups.items() if frag in name), None)
        assert group is not None, f"{name}: in no init group"
        counted[group] += 1
        mean, std, absmax = got.mean().item(), got.std(unbiased=False).item(), got.abs().max().item()
        where = f"{name} ({group})"
        if want["std"] == 0.0:
            assert std == 0.0 and mean == want["mean"], f"{where}: constant {want['mean']} vs mean {mean} std {std}"
            continue
        assert abs(mean - want["mean"]) <= 5 * want["std"] * math.sqrt(2 / n) + 1e-6, \
            f"{where}: mean {mean:.5f} vs the original's {want['mean']:.5f}"
        assert abs(std / want["std"] - 1) <= 4 / math.sqrt(2 * n) + 0.02, \
            f"{where}: std {std:.5f} vs the original's {want['std']:.5f}"
        # The largest |value| is near the bound for bounded (uniform, truncated) draws, and for
        # normal draws it grows slowly with n: 15% (30% for small tensors) tells them apart.
        assert abs(absmax / want["absmax"] - 1) <= (0.15 if n >= 4096 else 0.3), \
            f"{where}: |max| {absmax:.5f} vs the original's {want['absmax']:.5f}"
    assert all(counted.values()), f"init groups with no parameter: {[g for g, c in counted.items() if not c]}"
    return counted

"""Comparing initialisation statistics of an l3m model with the original's (recorded in a parity fixture's
meta.json) per parameter group, within sampling tolerance (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch


def pooled(stats: Mapping[str, Mapping], names: Iterable[str]) -> dict[str, float]:
    """mean / std / absmax / numel of the union of several recorded tensors (population std)."""
    names = list(names)
    n = sum(stats[k]["numel"] for k in names)
    mean = sum(stats[k]["mean"] * stats[k]["numel"] for k in names) / n
    second = sum((stats[k]["std"] ** 2 + stats[k]["mean"] ** 2) * stats[k]["numel"] for k in names) / n
    return {"mean": mean, "std": math.sqrt(max(second - mean * mean, 0.0)),
            "absmax": max(stats[k]["absmax"] for k in names), "numel": n}


def measured(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, float]:
    t = torch.cat([state[k].detach().double().flatten() for k in names])
    return {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "absmax": t.abs().max().item(),
            "numel": t.numel()}


def select(names: Iterable[str], pattern: str) -> list[str]:
    return sorted(k for k in names if re.fullmatch(pattern, k))


def compare_groups(original: Mapping[str, Mapping], mine: Mapping[str, torch.Tensor],
                   groups: Mapping[str, tuple[str, str]], root: str = "") -> dict[str, tuple[dict, dict]]:
    """For each group `(pattern over the original's names, pattern over l3m's)`, assert that both sides
    have the same numel and agree on mean, std and |max| within sampling tolerance. Also asserts that
    the groups cover every floating tensor on both sides. Returns the pairs compared. The l3m patterns
    match names inside the model; `root` is the model's name that starts every l3m name."""
    used_o: set[str] = set()
    used_m: set[str] = set()
    compared = {}
    for group, (pat_o, pat_m) in groups.items():
        names_o, names_m = select(original, pat_o), select(mine, rf"{re.escape(root)}\.(?:{pat_m})" if root else pat_m)
        assert names_o and names_m, f"{group}: no tensors ({len(names_o)} original, {len(names_m)} l3m)"
        used_o.update(names_o)
        used_m.update(names_m)
        o, m = pooled(original, names_o), measured(mine, names_m)
        compared[group] = (o, m)
        assert o["numel"] == m["numel"], f"{group}: {m['numel']} values in l3m, {o['numel']} in the original"
        if o["std"] == 0.0:  # a constant (zeros, ones)
            assert m["std"] == 0.0 and m["mean"] == o["mean"], f"{group}: l3m {m} vs the original's constant {o}"
            continue
        n = o["numel"]
        ratio_tol = 4.0 / math.sqrt(2 * n) + 0.02
        assert abs(m["std"] / o["std"] - 1.0) < ratio_tol, f"{group}: std {m['std']:.5g} vs {o['std']:.5g}"
        assert abs(m["mean"] - o["mean"]) < 5.0 * o["std"] / math.sqrt(n) + 1e-7, (
            f"{group}: mean {m['mean']:.5g} vs {o['mean']:.5g}")
        # Bounded (uniform, truncated) draws reach their bound; unbounded normal draws go to ~4-5 std, and
        # their maximum varies more in small tensors.
        max_tol = 0.15 if n >= 10_000 else 0.35
        assert abs(m["absmax"] / o["absmax"] - 1.0) < max_tol, (
            f"{group}: |max| {m['absmax']:.5g} vs {o['absmax']:.5g}")
    floating = {k for k, v in mine.items() if torch.is_floating_point(v)}
    assert not set(original) - used_o, f"original tensors in no group: {sorted(set(original) - used_o)}"
    assert not floating - used_m, f"l3m tensors in no group: {sorted(floating - used_m)}"
    return compared

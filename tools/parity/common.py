"""Shared by the per-system fixture makers: load the original's YAML at a tiny size, build its model with
Hydra, and write a fixture (weights, inputs, outputs, losses, init statistics, full-size parameter count).

This module runs the *original* code, so it never imports l3m (the two packages share the name `l3m`);
`put_reference_on_path` must run before anything from the reference is imported.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FIXTURE_BUDGET_BYTES = 3 * 1024 * 1024  # all systems together


def put_reference_on_path(reference: Path) -> str:
    """Make `import l3m` resolve to the original checkout; returns its commit (from UPSTREAM_COMMIT or git)."""
    src = reference / "src"
    if not (src / "l3m" / "__init__.py").is_file():
        raise SystemExit(f"{reference}: not an ml-l3m checkout (no src/l3m)")
    if "l3m" in sys.modules and not str(sys.modules["l3m"].__file__).startswith(str(src)):
        raise SystemExit("the project's l3m is already imported; run the fixture maker in a fresh process")
    sys.path.insert(0, str(src))
    return reference_commit(reference)


def reference_commit(reference: Path) -> str:
    marker = reference / "UPSTREAM_COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    head = reference / ".git" / "HEAD"
    if head.is_file():
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            target = reference / ".git" / ref[5:]
            if target.is_file():
                return target.read_text().strip()
        return ref
    return "unknown"


def load_config(reference: Path, yaml_path: str, constants: Mapping[str, Any] = ()) -> Any:
    """The original YAML with `constants.*` replaced (tiny sizes); interpolations resolve lazily."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(reference / "configs" / yaml_path)
    for key, value in dict(constants).items():
        OmegaConf.update(cfg, f"constants.{key}", value, force_add=True)
    return cfg


def instantiate(node: Any) -> Any:
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(node)


def seeded(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def full_size_param_count(reference: Path, yaml_path: str, build=None) -> int:
    """Parameters of the original model at its YAML's full size, built on the meta device (no memory)."""
    import torch

    cfg = load_config(reference, yaml_path)
    with torch.device("meta"):
        model = build(cfg) if build else instantiate(cfg.model.meta_model)
    return param_count(model)


def init_statistics(model: Any) -> dict[str, dict[str, Any]]:
    """Per-parameter statistics of a freshly initialised model: enough to tell the distribution, its
    std, truncation (|max|) and constant initialisations (zeros, ones) apart."""
    import torch

    stats = {}
    for name, p in model.state_dict().items():
        if not torch.is_floating_point(p):
            continue
        t = p.detach().double().flatten()
        stats[name] = {
            "shape": list(p.shape),
            "mean": t.mean().item(),
            "std": t.std(unbiased=False).item() if t.numel() > 1 else 0.0,
            "absmax": t.abs().max().item(),
            "numel": t.numel(),
        }
    return stats


def tensors_only(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The tensor leaves of a (nested) data_dict, flattened to `a.b` keys, contiguous and on the CPU."""
    import torch

    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value.detach().cpu().contiguous()
        elif isinstance(value, Mapping):
            out.update(tensors_only(value, name + "."))
    return out


def write_fixture(out: Path, system: str, *, weights: Mapping[str, Any], inputs: Mapping[str, Any],
                  outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """tests/data/parity/<system>/{weights,inputs,outputs}.safetensors + meta.json."""
    from safetensors.torch import save_file

    folder = out / system
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(folder / "weights.safetensors"))
    save_file(tensors_only(inputs), str(folder / "inputs.safetensors"))
    save_file(tensors_only(outputs), str(folder / "outputs.safetensors"))
    (folder / "meta.json").write_text(json.dumps(dict(meta), indent=1, sort_keys=True) + "\n")
    return folder


def fixture_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

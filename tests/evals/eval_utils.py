"""Tiny data and models for the evaluation suites, all made in tmp_path (the fixtures: conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

COLORS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}


def color_folders(root: Path, per_class: int, seed: int = 0) -> Path:
    """Class folders a/b/c of 16x16 images: a solid red/green/blue with a little noise."""
    g = torch.Generator().manual_seed(seed)
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = torch.tensor(rgb, dtype=torch.float32).view(1, 1, 3).expand(16, 16, 3)
            noisy = (base * 0.7 + 40 * torch.rand(16, 16, 3, generator=g)).clamp(0, 255).byte().numpy()
            Image.fromarray(noisy).save(root / name / f"{i}.png")
    return root


def save_weights(path: Path, program: Path, overrides: list[str], edit=None) -> Path:
    """The program's freshly initialised model weights (after `edit(model)`) as safetensors."""
    from l3m.dsl import compile_file
    from l3m.model.build import build_model, materialize

    compiled = compile_file(str(program), overrides)
    assert compiled.ok, [d.message for d in compiled.diagnostics]
    torch.manual_seed(0)
    model = build_model(compiled.program, device="meta", schedule=compiled.flow.model_order())
    materialize(model, "cpu")
    if edit is not None:
        with torch.no_grad():
            edit(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path

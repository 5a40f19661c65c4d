"""Shared fixtures: compile `.l3m` text written to a temporary file."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def compile_text(tmp_path):
    from l3m.dsl import compile_file

    def run(text: str, overrides=(), name: str = "prog.l3m", world_size=None, **files: str):
        for fname, body in files.items():
            p = tmp_path / fname.replace("__", "/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(body)
        path = tmp_path / name
        path.write_text(text)
        return compile_file(str(path), overrides, world_size=world_size)

    return run


@pytest.fixture
def run_env(monkeypatch, tmp_path):
    """For tests that train or export (`pytestmark`): wandb off, no peak-FLOPs timing, the CPU,
    and the temporary directory as the working directory (for the default `runs/`)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")  # no matmul timing in tests
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)

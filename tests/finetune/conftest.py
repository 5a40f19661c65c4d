"""Fixtures of the fine-tuning tests: a quiet CPU environment in a temporary directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_env(monkeypatch, tmp_path):
    """wandb off, no peak-FLOPs timing, the CPU, and the temporary directory as working directory."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)

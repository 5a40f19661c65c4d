"""Fixtures of the export tests: a quiet CPU environment in a temporary directory, and a umask of
0o022 so that "an ordinary file's mode" is 0o644."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def quiet_run(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    yield tmp_path
    os.umask(old)


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture
def timm():
    return pytest.importorskip("timm")

"""Fixtures of the engine tests: a quiet, CPU-only environment in a temporary directory, and the
tiny programs of `train_utils` written there."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_utils import DIGITS, LLM, corpus_text


@pytest.fixture
def run_env(monkeypatch, tmp_path):
    """Used by every engine test module (`pytestmark`): wandb off, no peak-FLOPs timing, the CPU,
    and the temporary directory as the working directory (for the default `runs/`)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")  # no matmul timing in tests
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(corpus_text())
    return p


@pytest.fixture
def llm(tmp_path, corpus, run_env) -> Path:
    p = tmp_path / "llm.l3m"
    p.write_text(LLM.format(corpus=corpus))
    return p


@pytest.fixture
def digits(tmp_path, run_env) -> Path:
    p = tmp_path / "digits.l3m"
    p.write_text(DIGITS)
    return p

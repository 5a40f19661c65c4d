"""Fixtures of the engine tests: a quiet, CPU-only environment in a temporary directory, and the
tiny programs of `train_utils` written there."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_utils import DIGITS, LLM, corpus_text


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

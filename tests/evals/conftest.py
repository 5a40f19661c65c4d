"""Fixtures of the evaluation suites' tests (the helpers: eval_utils.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_utils import color_folders


@pytest.fixture
def colors(tmp_path: Path) -> tuple[Path, Path]:
    """(train, val) class folders a/b/c: 8 and 4 images a class."""
    return color_folders(tmp_path / "train", 8, seed=1), color_folders(tmp_path / "val", 4, seed=2)

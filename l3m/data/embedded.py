"""Data that ships with the install, so examples and tests train with no download.

- **digits**: scikit-learn's 1,797 handwritten 8x8 digits (`sklearn.datasets.load_digits`, a file
  inside the scikit-learn wheel), with a fixed train/test split and short captions for
  image-text models.
- **stdlib text**: the `.py` files of Python's standard library, a few MB of real text for
  byte-level language models.

Both are read lazily and cached per process: importing this module costs nothing.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import torch

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_TEMPLATE = "a photo of the digit {}"
# Folders under the stdlib path that are not the standard library (installed packages).
_NOT_STDLIB = {"site-packages", "dist-packages", "__pycache__"}


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits: float [1797, 8, 8] in [0, 1] and long [1797] labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float() / 16.0
    labels = torch.from_numpy(bunch.target).long()
    return images, labels


def digits_split(split: str, train_fraction: float = 0.8, seed: int = 0, n: int = 1797) -> torch.Tensor:
    """Indices of one split: a seeded permutation cut at `train_fraction`, so train and test never overlap."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * train_fraction))
    return perm[:cut] if split == "train" else perm[cut:]


def digit_prompts(template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per class, in label order: the text side of zero-shot classification."""
    return [template.format(name) for name in DIGIT_NAMES]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's `.py` files, sorted by relative path (the same list on every run)."""
    root = stdlib_root()
    files = [p for p in root.rglob("*.py") if not _NOT_STDLIB.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())

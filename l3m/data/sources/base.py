"""What every data source is: a map-style Dataset of per-sample tensor dicts keyed by port.

Sources only say *what* a sample is. Order, sharding across ranks, batching, resumption and
per-sample augmentation seeds are the loader's job (`l3m.data.loader`), so that every source is
exactly resumable without doing anything itself.
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from torch.utils.data import Dataset

Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


class Source(Dataset):
    """Base class: `outputs` names the ports; `spec()` gives their per-sample shapes without I/O.

    Subclasses set `outputs`, implement `__len__`, `__getitem__(i) -> {port: tensor}` and `spec`.
    `batch_size` is the global batch (all data-parallel ranks together: one optimizer step's
    samples for `train`, split over ranks and micro-batches; l3m.data.global_batch); `shuffle`
    and `drop_last` are the loader's defaults for this source (in training, `drop_last = false`
    keeps an incomplete last global batch when it splits over the ranks and micro-batches).
    """

    outputs: tuple[str, ...] = ()

    def __init__(self, batch_size: int, shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def spec(self) -> Spec:
        """Port -> (per-sample shape, dtype), known from the arguments alone (planning on meta)."""
        raise NotImplementedError(f"{type(self).__name__} must define spec()")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__()")


def find_files(root: str, pattern: str = "**/*") -> list[Path]:
    """Files named by `root`: a file, a directory searched with `pattern`, or a glob itself.

    Sorted by path so that every run, on every rank, sees the same list.
    """
    if any(c in root for c in "*?["):
        files = [Path(p) for p in glob.glob(root, recursive=True)]
    else:
        path = Path(root).expanduser()
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise FileNotFoundError(f"no such file or directory: {root!r}")
        files = list(path.glob(pattern))
    files = sorted((p for p in files if p.is_file()), key=lambda p: p.as_posix())
    if not files:
        where = root if any(c in root for c in "*?[") else f"{root}/{pattern}"
        raise FileNotFoundError(f"no files match {where!r}")
    return files


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

"""Byte-level text for language models: the standard library, text files, JSONL documents.

A source reads its files into one byte stream (capped at `max_bytes`; 0 or less: no cap), keeps
the first or last `test_fraction` of it for `split`, and cuts the split into non-overlapping
windows of `seq_len + 1` bytes: `tokens` = a window's first `seq_len` bytes, `targets` = its last
`seq_len` (the next byte at every position). Token = byte value, vocabulary 256.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from l3m.data import embedded
from l3m.data.sources.base import Source, Spec, check_split, find_files
from l3m.registry import register


class ByteStream(Source):
    """Shared machinery: subclasses only say which bytes make up the stream (`read`)."""

    outputs = ("tokens", "targets")

    def __init__(
        self,
        seq_len: int,
        batch_size: int,
        split: str,
        test_fraction: float,
        max_bytes: int,
        shuffle: bool,
        drop_last: bool,
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        check_split(split)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.seq_len, self.split, self.test_fraction, self.max_bytes = (
            seq_len,
            split,
            test_fraction,
            max_bytes,
        )

    def read(self) -> bytes:
        """Every byte of the source, in a fixed order; reading may stop past `max_bytes`."""
        raise NotImplementedError

    def _capped(self) -> int:
        return self.max_bytes if self.max_bytes > 0 else -1

    @cached_property
    def stream(self) -> torch.Tensor:
        """uint8 [n]: this split's bytes (read once per process, shared with forked workers)."""
        data = self.read()
        if self.max_bytes > 0:
            data = data[: self.max_bytes]
        cut = int(len(data) * (1.0 - self.test_fraction))
        part = data[:cut] if self.split == "train" else data[cut:]
        if len(part) < self.seq_len + 1:
            raise ValueError(
                f"{type(self).__name__}: the {self.split} split holds {len(part)} bytes, fewer than "
                f"seq_len + 1 = {self.seq_len + 1}; give it more text or a shorter seq_len"
            )
        return torch.from_numpy(np.frombuffer(part, dtype=np.uint8).copy())

    def __len__(self) -> int:
        return (len(self.stream) - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        start = i * self.seq_len
        w = self.stream[start : start + self.seq_len + 1].long()
        return {"tokens": w[:-1], "targets": w[1:]}

    def spec(self) -> Spec:
        return {"tokens": ((self.seq_len,), torch.long), "targets": ((self.seq_len,), torch.long)}


def read_text_files(files: list[Path], limit: int) -> bytes:
    """Concatenated bytes of the UTF-8 files among `files` (others skipped), stopping past `limit` (-1: all)."""
    chunks, total = [], 0
    for path in files:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        chunks.append(data)
        total += len(data)
        if 0 <= limit <= total:
            break
    return b"".join(chunks)


@register("source")
class TextBytes(ByteStream):
    """Bytes of text files; `root = "stdlib"` means the `.py` files of Python's standard library.

    Otherwise `root` is a file, a directory or a glob; `pattern` selects files in a directory
    ("" means "**/*.py" for the standard library and "**/*" elsewhere). Files that are not UTF-8
    are skipped. The file order is sorted, so the stream is the same on every run and rank.
    """

    def __init__(
        self,
        root: str = "stdlib",
        seq_len: int = 256,
        batch_size: int = 16,
        split: Literal["train", "test"] = "train",
        test_fraction: float = 0.05,
        max_bytes: int = 8_000_000,
        pattern: str = "",
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(seq_len, batch_size, split, test_fraction, max_bytes, shuffle, drop_last)
        self.root, self.pattern = root, pattern

    def files(self) -> list[Path]:
        if self.root == "stdlib":
            if self.pattern not in ("", "**/*.py"):
                raise ValueError(
                    "root = 'stdlib' reads the standard library's .py files; leave pattern empty"
                )
            return embedded.stdlib_files()
        return find_files(self.root, self.pattern or "**/*")

    def read(self) -> bytes:
        return read_text_files(self.files(), self._capped())


@register("source")
class TextFiles(TextBytes):
    """Bytes of the text files under `root` (a file, a directory searched with `pattern`, or a glob)."""

    def __init__(
        self,
        root: str,
        pattern: str = "**/*.txt",
        seq_len: int = 256,
        batch_size: int = 16,
        split: Literal["train", "test"] = "train",
        test_fraction: float = 0.05,
        max_bytes: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            root, seq_len, batch_size, split, test_fraction, max_bytes, pattern, shuffle, drop_last
        )

    def files(self) -> list[Path]:
        return find_files(self.root, self.pattern)


@register("source")
class TextJSONL(ByteStream):
    """Documents from JSON Lines files (`path`: a file or a glob), the string `field` of each
    line, joined by `separator` into one byte stream."""

    def __init__(
        self,
        path: str,
        field: str = "text",
        seq_len: int = 256,
        batch_size: int = 16,
        split: Literal["train", "test"] = "train",
        test_fraction: float = 0.05,
        max_bytes: int = 0,
        separator: str = "\n\n",
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(seq_len, batch_size, split, test_fraction, max_bytes, shuffle, drop_last)
        self.path, self.field, self.separator = path, field, separator

    def read(self) -> bytes:
        sep = self.separator.encode("utf-8")
        limit = self._capped()
        chunks, total = [], 0
        for file in find_files(self.path):
            for lineno, doc in enumerate(iter_jsonl(file), start=1):
                if doc is None:
                    continue
                value = doc.get(self.field) if isinstance(doc, dict) else None
                if not isinstance(value, str):
                    raise ValueError(f"{file}:{lineno}: expected a string field {self.field!r}")
                data = value.encode("utf-8")
                chunks.append(data)
                total += len(data) + len(sep)
                if 0 <= limit <= total:
                    return sep.join(chunks)
        return sep.join(chunks)


def iter_jsonl(path: Path):
    """The parsed lines of a JSON Lines file (None for blank lines, so line numbers stay right)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                yield None
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None

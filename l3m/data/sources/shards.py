"""Token shards written by `l3m data prepare`, read through memory maps and packed into windows.

The shards, in manifest order, are one stream of tokens (documents each followed by EOS). The
first `1 - test_fraction` of it is the train split, the rest the test split; a split is cut into
windows of `seq_len + 1` tokens that may cross shard and document boundaries: `tokens` = a
window's first `seq_len`, `targets` = its last `seq_len`. Sample `i` is window `i`, read by
slicing memory maps, so a 1 TB corpus costs the pages a batch touches, not its size (the maps are
renewed every `REMAP_EVERY` windows, so an epoch's pages do not pile up in the RSS).

With `segments = true` a third port `segments` (int64 [seq_len]) numbers the documents within
the window: 0 for the document the window starts in, then 1, 2, ... (an EOS belongs to the
document it closes), for `DocumentMask` to keep attention inside documents.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from l3m.data.errors import DataError
from l3m.data.prepare.format import DTYPES, ManifestError, read_manifest
from l3m.data.source_hooks import shards_manifest_tokenizer
from l3m.data.sources.base import Source, Spec, check_split
from l3m.registry import register

# Windows read between renewals of the memory maps. What a window touches stays in the process's
# RSS while its map lives, and the kernel maps more than the window (read-around, whole large folios:
# about 300 KiB a window measured on Linux 6.18), so an epoch would pile the corpus up in the RSS.
# Renewing the maps (a few mmap calls) bounds that to about REMAP_EVERY * 300 KiB; the pages stay
# in the page cache.
REMAP_EVERY = 128


@register("source")
class TokenShards(Source):
    """Packed windows of the token shards in `root` (a directory made by `l3m data prepare`).

    Nothing is read when the source is made (so `plan` works without the data); the manifest is
    checked on first use and the shards are memory-mapped, never loaded.
    """

    outputs = ("tokens", "targets", "segments?")
    shapes = "-> tokens: long[B, seq_len] < tokenizer_vocab, targets: long[B, seq_len] < tokenizer_vocab, segments: long[B, seq_len]"
    token_policy = "manifest"  # the checker reads the vocabulary from the manifest (`manifest_tokenizer`)

    def __init__(
        self,
        root: str,
        seq_len: int = 256,
        batch_size: int = 16,
        split: Literal["train", "test"] = "train",
        test_fraction: float = 0.0,
        shuffle: bool = True,
        drop_last: bool = True,
        segments: bool = False,
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        check_split(split)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if split == "test" and test_fraction == 0.0:
            raise ValueError("TokenShards: split = test needs a test_fraction above 0 (the test split is the "
                             "last test_fraction of the tokens)")
        self.root, self.seq_len, self.split, self.test_fraction = root, seq_len, split, test_fraction
        self.segments = segments
        self._layout: tuple | None = None
        self._bounds_list: list[int] | None = None
        self._len: int | None = None
        self._reads = 0
        self._maps: dict[int, np.ndarray] = {}
        self._ends: dict[int, np.ndarray] = {}

    # -- checker -------------------------------------------------------------------------------
    manifest_tokenizer = staticmethod(shards_manifest_tokenizer)  # the vocabulary of root's manifest

    # -- layout --------------------------------------------------------------------------------
    def _load(self) -> tuple:
        """(directory, dtype, shard files, shard bounds [n+1], split start, split length), checked once."""
        if self._layout is None:
            try:
                m = read_manifest(self.root)
            except (OSError, ManifestError) as e:
                raise type(e)(f"TokenShards: {e}") from None
            root = Path(os.path.expanduser(self.root))
            dtype = np.dtype(DTYPES[m["dtype"]])
            files, counts = [], []
            for s in m["shards"]:
                path = root / s["file"]
                want = int(s["tokens"]) * dtype.itemsize
                try:
                    size = path.stat().st_size
                except OSError as e:
                    raise FileNotFoundError(f"TokenShards: shard {path} is missing ({e.strerror}); "
                                            "prepare the directory again") from None
                if size != want:
                    raise ManifestError(f"TokenShards: shard {path} holds {size} bytes, the manifest says "
                                        f"{want} ({s['tokens']} {m['dtype']} tokens): it is truncated or "
                                        "corrupt; prepare the directory again")
                files.append((path, root / s["docs"]))
                counts.append(int(s["tokens"]))
            bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
            total = int(bounds[-1])
            cut = int(total * (1.0 - self.test_fraction))
            start, length = (0, cut) if self.split == "train" else (cut, total - cut)
            if length < self.seq_len + 1:
                raise ValueError(f"TokenShards: the {self.split} split of {self.root!r} holds {length} tokens, "
                                 f"fewer than seq_len + 1 = {self.seq_len + 1}")
            self._vocab = int(m["tokenizer"]["vocab_size"])
            self._layout = (root, dtype, files, bounds, start, length)
        return self._layout

    def _corrupt(self, lo: int, ids: np.ndarray) -> None:
        """Ids past the manifest's vocabulary: name the shard and the byte where they start."""
        _, dtype, files, _, _, _ = self._load()
        pos = lo + int(np.argmax(ids >= self._vocab))
        bounds = self._bounds()
        k = bisect.bisect_right(bounds, pos) - 1
        raise DataError(f"{files[k][0]}@{(pos - bounds[k]) * dtype.itemsize}",
                        f"token id {int(ids.max())} is outside the vocabulary of {self._vocab}: the shard is "
                        "corrupt; prepare it again")

    def _bounds(self) -> list[int]:
        """Shard start offsets in the stream (and the total at the end), as ints for `bisect`."""
        if self._bounds_list is None:
            self._bounds_list = [int(b) for b in self._load()[3]]
        return self._bounds_list

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"], state["_ends"] = {}, {}  # memory maps are reopened in the receiving process
        return state

    def _tokens(self, k: int) -> np.ndarray:
        if k not in self._maps:
            _, dtype, files, bounds, _, _ = self._load()
            n = int(bounds[k + 1] - bounds[k])
            self._maps[k] = np.memmap(files[k][0], dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return self._maps[k]

    def _doc_ends(self, k: int) -> np.ndarray:
        if k not in self._ends:
            _, _, files, _, _, _ = self._load()
            try:
                ends = np.load(files[k][1], mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"{files[k][1]}", f"the document index is unreadable ({e})") from None
            self._ends[k] = ends
        return self._ends[k]

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Stream tokens [lo, hi) as int64, across shards."""
        self._reads += 1
        if self._reads % REMAP_EVERY == 0:
            self._maps.clear()  # mapped pages count in RSS: renew the maps before an epoch adds up to the corpus
            self._ends.clear()
        bounds = self._bounds()
        k = bisect.bisect_right(bounds, lo) - 1
        a = bounds[k]
        if hi <= bounds[k + 1]:  # the usual case: one shard
            return self._tokens(k)[lo - a : hi - a].astype(np.int64)
        out = np.empty(hi - lo, dtype=np.int64)
        pos = lo
        while pos < hi:
            a, b = bounds[k], bounds[k + 1]
            take = min(hi, b) - pos
            if take > 0:
                out[pos - lo : pos - lo + take] = self._tokens(k)[pos - a : pos - a + take]
                pos += take
            k += 1
        return out

    def doc_segments(self, lo: int, n: int) -> np.ndarray:
        """For stream positions lo .. lo+n-1: the document index relative to the one at `lo`."""
        bounds = self._bounds()
        hi = lo + n
        found = []
        k = bisect.bisect_right(bounds, lo) - 1
        while k < len(bounds) - 1 and bounds[k] < hi:
            a = bounds[k]
            ends = self._doc_ends(k)
            i, j = np.searchsorted(ends, [lo - a, hi - a], side="right")  # ends e with lo < e + a <= hi
            if j > i:
                found.append(np.asarray(ends[i:j], dtype=np.int64) + a)
            k += 1
        ends = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        return np.searchsorted(ends, np.arange(lo, hi), side="right").astype(np.int64)

    # -- dataset -------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self._len is None:
            *_, length = self._load()
            self._len = (length - 1) // self.seq_len
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        lo = self._layout[4] + i * self.seq_len
        ids = self.read(lo, lo + self.seq_len + 1)
        if ids.max() >= self._vocab:
            self._corrupt(lo, ids)
        w = torch.from_numpy(ids)
        out = {"tokens": w[:-1], "targets": w[1:]}
        if self.segments:
            out["segments"] = torch.from_numpy(self.doc_segments(lo, self.seq_len))
        return out

    def spec(self) -> Spec:
        out = {"tokens": ((self.seq_len,), torch.long), "targets": ((self.seq_len,), torch.long)}
        if self.segments:
            out["segments"] = ((self.seq_len,), torch.long)
        return out

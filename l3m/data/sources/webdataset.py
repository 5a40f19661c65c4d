"""Image and image-text samples from tar shards in the webdataset layout, read by random access.

A shard is an uncompressed tar whose members are grouped into samples by their name up to the
first dot: `000001.jpg` + `000001.txt` (a caption) + `000001.cls` (a label), or a `.json` with
fields. The `webdataset` package streams shards front to back (an IterableDataset), which does not
fit l3m's loader: every batch is a function of (seed, epoch, batch), so a resumed run re-reads
exactly the samples it would have read, in any worker, on any rank. So this source builds an
index instead: one pass of the standard library's `tarfile` over the shards' headers (data is
skipped, not read) records where each member's bytes lie, 8 bytes per offset and per size; a
sample is then read with one seek per member and decoded in the loader's worker, with the same
image pipeline and decoder restrictions as `ImageFolder`.

A shard that is not a tar (or is compressed, which allows no seeking), a member cut short, an
image PIL cannot decode or a malformed label raises `DataError` naming the shard and the byte
offset of the member, which the loader's `on_error` policy raises or skips (what the index
cannot read, under `on_error = skip`: the rest of a shard past a corrupt header, counted once).
The index is rebuilt by each process that builds the source (about 14k members/s on one core).
"""

from __future__ import annotations

import io
import json
import tarfile
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from l3m.data.errors import DataError, guarded, scan_error
from l3m.data.source_hooks import WEBDATASET_PORTS as _PORTS
from l3m.data.source_hooks import webdataset_port_problem
from l3m.data.sources.base import Spec, find_files
from l3m.data.sources.captions import caption_encoder, encode, require
from l3m.data.sources.images import ImageSource
from l3m.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Interpolation, load_rgb
from l3m.registry import register


def split_name(name: str) -> tuple[str, str]:
    """A member name -> (sample key, extension): `dir/000001.seg.png` -> (`dir/000001`, `seg.png`)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


class ShardIndex:
    """Per sample: its shard, and for each wanted port the (offset, size) of its member (-1: absent)."""

    def __init__(self, shards: list[Path], wanted: dict[str, tuple[str, ...]]) -> None:
        self.shards, self.ports = shards, list(wanted)
        self.scan_errors: list[str] = []  # shards cut short under `scan_policy("skip")`
        shard_of: list[int] = []
        where: list[list[int]] = []
        for s, path in enumerate(shards):
            for row in self._scan(path, wanted):
                shard_of.append(s)
                where.append(row)
        self.shard = np.asarray(shard_of, dtype=np.int32)
        self.where = np.asarray(where, dtype=np.int64).reshape(len(where), 2 * len(self.ports))

    def _scan(self, path: Path, wanted: dict[str, tuple[str, ...]]) -> list[list[int]]:
        """The shard's samples; with `scan_policy("skip")`, the complete ones before a corrupt header
        (the sample it interrupts is dropped, as it may lack members)."""
        rows: list[list[int]] = []
        try:
            self._scan_into(path, wanted, rows)
        except DataError as e:
            scan_error(e, self.scan_errors)
        return rows

    def _scan_into(self, path: Path, wanted: dict[str, tuple[str, ...]], rows: list[list[int]]) -> None:
        key, row = None, None
        try:
            with tarfile.open(path, mode="r:") as tar:  # "r:": uncompressed, so members can be sought
                while True:
                    offset = tar.offset
                    try:
                        info = tar.next()
                    except tarfile.ReadError as e:
                        if offset >= path.stat().st_size:  # cut short: its last member fails when read
                            break
                        raise DataError(f"{path}@{offset}", f"corrupt tar header ({e})") from None
                    if info is None:
                        self._check_end(path, tar.offset)
                        break
                    if not info.isfile():
                        continue
                    k, ext = split_name(info.name)
                    if k != key:
                        if row is not None:
                            rows.append(row)
                        key, row = k, [-1] * (2 * len(self.ports))
                    for p, port in enumerate(self.ports):
                        if ext in wanted[port] and row[2 * p] < 0:
                            row[2 * p], row[2 * p + 1] = info.offset_data, info.size
                    tar.members.clear()  # the index keeps what it needs; tarfile need not keep every header
        except tarfile.ReadError as e:
            raise DataError(str(path), f"not an uncompressed tar shard ({e})") from None
        if row is not None:
            rows.append(row)

    @staticmethod
    def _check_end(path: Path, offset: int) -> None:
        """tarfile ends quietly at a bad header past the first: a tar's end is zeros (or, cut short, nothing)."""
        with open(path, "rb") as f:
            f.seek(offset)
            block = f.read(tarfile.BLOCKSIZE)
        if block.strip(b"\0"):
            raise DataError(f"{path}@{offset}", "corrupt tar header (the shard is damaged from here on)")

    def __len__(self) -> int:
        return len(self.shard)


@register("source")
class WebDataset(ImageSource):
    """Samples of tar shards (`root`: a file, a folder searched with `pattern`, or a glob like
    `shards/*.tar`) as ports `image`, `text` and `label`.

    `image_ext`, `text_ext` and `label_ext` name each port's member extensions (`;`-separated,
    first match wins); an empty one drops the port, so the ports are optional and best bound by
    name. A port whose extension is `json` reads `text_field` / `label_field` from that member. Captions are encoded like
    `ImageTextJSONL`'s (`tokenizer`, `seq_len`, `text_clean`, `pad_token`); a `.cls` member holds
    an integer. A sample that lacks a declared port's member is bad data (`DataError`).
    """

    outputs = ("image?", "text?", "label?")
    shapes = "-> image: float[B, 3, image_size, image_size], text: long[B, seq_len] < tokenizer_vocab, label: long[B]"
    token_policy = "caption"

    def __init__(
        self,
        root: str,
        pattern: str = "**/*.tar",
        image_ext: str = "jpg;jpeg;png;webp",
        text_ext: str = "",
        label_ext: str = "",
        text_field: str = "text",
        label_field: str = "label",
        image_size: int = 224,
        seq_len: int = 77,
        batch_size: int = 32,
        augment: Literal["none", "crop_flip", "randaug"] = "none",
        min_scale: float = 0.08,
        normalize: bool = True,
        mean: list[float] = IMAGENET_MEAN,
        std: list[float] = IMAGENET_STD,
        shuffle: bool = True,
        drop_last: bool = True,
        interpolation: Interpolation = "bilinear",
        color_jitter: list[float] = (),
        color_jitter_prob: float = 1.0,
        resize: int = 0,
        tokenizer: str = "bytes",
        text_clean: Literal["none", "lower", "nopunct"] = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(
            image_size, batch_size, augment, min_scale, normalize, mean, std, shuffle, drop_last,
            interpolation=interpolation, color_jitter=color_jitter, color_jitter_prob=color_jitter_prob, resize=resize,
        )
        exts = {"image": image_ext, "text": text_ext, "label": label_ext}
        self.wanted = {p: tuple(e.strip().lower().lstrip(".") for e in exts[p].split(";") if e.strip())
                       for p in _PORTS if exts[p].strip()}
        if not self.wanted:
            raise ValueError("WebDataset: set at least one of image_ext, text_ext, label_ext")
        if "text" in self.wanted and seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 (BOS and EOS), got {seq_len}")
        self.root, self.pattern, self.seq_len = root, pattern, seq_len
        self.text_field, self.label_field = text_field, label_field
        if "text" in self.wanted:
            self.encoder = caption_encoder(type(self).__name__, tokenizer, seq_len, text_clean, pad_token)

    port_problem = staticmethod(webdataset_port_problem)  # read by `l3m lint` (`l3m.dsl.datacheck`)

    @cached_property
    def index(self) -> ShardIndex:
        return ShardIndex(find_files(self.root, self.pattern), self.wanted)

    @property
    def scan_errors(self) -> list[str]:
        """What the index left out under `scan_policy("skip")` (the loader counts it)."""
        return self.index.scan_errors

    def __len__(self) -> int:
        if "text" in self.wanted:
            require(self.encoder)  # no tokenizer given: say so here, not in a worker
        return len(self.index)

    def _member(self, i: int, p: int, port: str) -> tuple[bytes, str]:
        """Sample `i`'s member for `port`: its bytes and `shard@offset` for messages."""
        idx = self.index
        path = idx.shards[int(idx.shard[i])]
        offset, size = (int(v) for v in idx.where[i, 2 * p : 2 * p + 2])
        if offset < 0:
            raise DataError(str(path), f"sample {i} has no .{' / .'.join(self.wanted[port])} member for '{port}'")
        where = f"{path}@{offset}"
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) < size:
            raise DataError(where, f"member truncated: {len(data)} of {size} bytes")
        return data, where

    def _field(self, data: bytes, where: str, field: str, ext_is_json: bool) -> object:
        text = guarded(where, "not UTF-8 text", lambda: data.decode("utf-8"))
        if not ext_is_json:
            return text
        rec = guarded(where, "not valid JSON", lambda: json.loads(text))
        if not isinstance(rec, dict) or field not in rec:
            raise DataError(where, f"JSON member has no field {field!r}")
        return rec[field]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self.index):
            raise IndexError(f"sample {i} out of range for {len(self.index)} samples")
        out = {}
        for p, port in enumerate(self.index.ports):
            data, where = self._member(i, p, port)
            is_json = self.wanted[port] == ("json",)
            if port == "image":
                out["image"] = guarded(where, "cannot decode image",
                                       lambda d=data: self.transform(load_rgb(io.BytesIO(d))))
            elif port == "text":
                text = self._field(data, where, self.text_field, is_json)
                out["text"] = encode(self.encoder, str(text))
            else:
                value = self._field(data, where, self.label_field, is_json)
                label = guarded(where, "label is not an integer", lambda v=value: int(str(v).strip()))
                out["label"] = torch.tensor(label, dtype=torch.long)
        return out

    def spec(self) -> Spec:
        full = {"image": self.image_spec(), "text": ((self.seq_len,), torch.long), "label": ((), torch.long)}
        return {port: full[port] for port in _PORTS if port in self.wanted}

"""Where each document of a text source lies on disk, so that samples are read when asked for.

One buffered scan of the files builds a `DocIndex`: the byte offset of every document (a whole
file, or a non-blank JSONL line) in a numpy int64 array, 8 bytes per document, and for the byte
stream of `tokenizer = "bytes"` the document's start in that stream (8 more). Nothing else of the
text stays in memory: a loader worker seeks to a document and reads it (`doc`), or reads a byte
range of the stream across files and documents (`read_range`). Line numbers, needed only for an
error message, are counted again when one is raised.

The scan keeps the sources' historical rules, so the samples are the ones a full read gave:
files that are not UTF-8 are left out, blank JSONL lines are not documents, and with a byte cap
the scan stops after the document that reaches it.
"""

from __future__ import annotations

import codecs
import json
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np

from l3m.data.errors import DataError, scan_error

_CHUNK = 1 << 20  # bytes per read while scanning


def is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as UTF-8 (read in chunks, never held whole)."""
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                dec.decode(chunk)
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def line_number(path: Path, offset: int) -> int:
    """1-based number of the line that starts at byte `offset` (for error messages)."""
    count, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            chunk = f.read(min(_CHUNK, offset - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count


def parse_jsonl_line(path: Path, offset: int, raw: bytes, field: str) -> str:
    """The string `field` of one JSONL line, or a `DataError` naming the file and line."""
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise DataError(f"{path}:{line_number(path, offset)}", f"not valid JSON ({msg})") from None
    value = rec.get(field) if isinstance(rec, dict) else None
    if not isinstance(value, str):
        raise DataError(f"{path}:{line_number(path, offset)}", f"expected a string field {field!r}")
    return value


class DocIndex:
    """The documents of a list of files: whole files (`field` None) or JSONL lines (`field` set).

    `limit` (-1: none) stops the scan after the document that brings the total past it, counting
    each document's UTF-8 bytes plus `sep_len` (what the sources always did). `with_lengths`
    also records each document's length in bytes (parsing every JSONL line; needed for the byte
    stream and for a cap on JSONL).
    """

    def __init__(self, files: list[Path], field: str | None, *, limit: int = -1, sep_len: int = 0,
                 with_lengths: bool = False) -> None:
        self.files, self.field = list(files), field
        self.scan_errors: list[str] = []  # lines dropped under `scan_policy("skip")`
        offsets, lengths, first = array("q"), array("q"), array("q")
        used: list[Path] = []
        total = 0
        for path in self.files:
            if 0 <= limit <= total:
                break
            if field is None:
                if not is_utf8(path):
                    continue
                first.append(len(offsets))
                used.append(path)
                size = path.stat().st_size
                offsets.append(0)
                lengths.append(size)
                total += size + sep_len
                continue
            first.append(len(offsets))
            used.append(path)
            total = self._scan_jsonl(path, offsets, lengths, total, limit, sep_len, with_lengths or limit >= 0)
        self.files = used
        self.offsets = np.frombuffer(offsets, dtype=np.int64).copy() if offsets else np.zeros(0, np.int64)
        self.first = np.frombuffer(first, dtype=np.int64).copy() if first else np.zeros(0, np.int64)
        self.lengths = (np.frombuffer(lengths, dtype=np.int64).copy() if lengths else np.zeros(0, np.int64)) \
            if (with_lengths or field is None) else None

    def _scan_jsonl(self, path: Path, offsets: array, lengths: array, total: int, limit: int, sep_len: int,
                    parse: bool) -> int:
        pos = 0
        with open(path, "rb", buffering=_CHUNK) as f:
            for line in f:
                start, pos = pos, pos + len(line)
                if not line.strip():
                    continue
                if not parse:
                    offsets.append(start)
                    continue
                try:
                    n = len(parse_jsonl_line(path, start, line, self.field).encode("utf-8", "surrogatepass"))
                except DataError as e:
                    scan_error(e, self.scan_errors)
                    continue
                offsets.append(start)
                lengths.append(n)
                total += n + sep_len
                if 0 <= limit <= total:
                    break
        return total

    def __len__(self) -> int:
        return len(self.offsets)

    def locate(self, k: int) -> tuple[Path, int]:
        """File and byte offset of document `k`."""
        f = int(np.searchsorted(self.first, k, side="right")) - 1
        return self.files[f], int(self.offsets[k])

    def raw(self, k: int) -> bytes:
        """Document `k`'s bytes as stored (a whole file, or one JSONL line)."""
        path, offset = self.locate(k)
        with open(path, "rb") as f:
            if self.field is None:
                return f.read()
            f.seek(offset)
            return f.readline()

    def text(self, k: int) -> str:
        """Document `k` as text (a JSONL line's field)."""
        path, offset = self.locate(k)
        raw = self.raw(k)
        if self.field is None:
            return raw.decode("utf-8", errors="replace")
        return parse_jsonl_line(path, offset, raw, self.field)

    def doc_bytes(self, k: int, lo: int = 0, hi: int = -1) -> bytes:
        """Bytes [lo, hi) of document `k` as it enters the byte stream (a file read with seek)."""
        if self.field is None:
            path, _ = self.locate(k)
            with open(path, "rb") as f:
                f.seek(lo)
                return f.read(-1 if hi < 0 else max(hi - lo, 0))
        data = self.text(k).encode("utf-8", "surrogatepass")
        return data[lo:] if hi < 0 else data[lo:hi]


class ByteRanges:
    """The byte stream of a `DocIndex` (documents joined by `sep`, cut at `cap` bytes), read by range."""

    def __init__(self, index: DocIndex, sep: bytes, cap: int = -1) -> None:
        if index.lengths is None:
            raise ValueError("a byte stream needs document lengths")
        self.index, self.sep = index, sep
        seg = index.lengths + len(sep)
        if len(seg):
            seg[-1] -= len(sep)  # no separator after the last document
        self.starts = np.concatenate([[0], np.cumsum(seg)]).astype(np.int64)
        total = int(self.starts[-1])
        self.size = min(total, cap) if cap >= 0 else total

    def read(self, a: int, b: int, fetch: Callable[[int, int, int], bytes] | None = None) -> bytes:
        """Stream bytes [a, b)."""
        fetch = fetch or self.index.doc_bytes
        b = min(b, self.size)
        out: list[bytes] = []
        k = int(np.searchsorted(self.starts, a, side="right")) - 1
        n = len(self.index)
        while a < b and k < n:
            start, length = int(self.starts[k]), int(self.index.lengths[k])
            lo = a - start
            if lo < length:
                piece = fetch(k, lo, min(length, b - start))
                out.append(piece)
                a += len(piece)
                if len(piece) < min(length, b - start) - lo:  # the file shrank since the scan
                    path, _ = self.index.locate(k)
                    raise DataError(f"{path}@{start + lo + len(piece)}", "file is shorter than when it was indexed")
            if a < b and k < n - 1:  # inside the separator after document k
                s_lo = a - (start + length)
                take = self.sep[s_lo : s_lo + (b - a)]
                out.append(take)
                a += len(take)
            k += 1
        return b"".join(out)

"""Text for language models: the standard library, text files, JSONL documents.

A source reads its files into one stream of tokens (capped at about `max_bytes` of text; 0 or
less: no cap), keeps the first or last `test_fraction` of it for `split`, and cuts the split into
windows of `seq_len + 1` tokens: `tokens` = a window's first `seq_len`, `targets` = its last
`seq_len` (the next token at every position).

With `tokenizer = "bytes"` (the default) a token is a byte value (vocabulary 256) and documents
are simply concatenated. With a real tokenizer (`l3m.data.tokenizers`: a shipped name, a
`tokenizer.json` or a SentencePiece `.model`) every document (a file, a JSONL record) is encoded
and followed by the tokenizer's EOS, and whole documents are packed into the stream.

With `pack = false` (a real tokenizer only) a sample is one document, as the original LLM's
`SimpleTextDataset` reads one row: `[BOS] + ids + EOS` (BOS only if the tokenizer has one; the
caption policy of `l3m.data.tokenizers.policy`), cut to `seq_len + 1` keeping the EOS, right-padded
with the pad id (`pad_token`, else the tokenizer's pad, else its EOS); `tokens` = its first
`seq_len`, `targets` = its last `seq_len`. Padded targets keep the pad id (the original's loss does
not ignore them). `split` then takes the first or last `test_fraction` of the documents.
`text_clean` (`none`, `lower`, `nopunct`; see `clean_text`) cleans each document in both modes.

Packed with a real tokenizer, a source also has the optional `segments` port (`l3m.data.segments`):
the document index of every `tokens` position within its window. Binding it (`-> tokens, targets,
segments`) and reading it with `DocumentMask() (segments = segments) -> mask` keeps attention inside
documents; `l3m lint` refuses the port on a source that cannot give it (bytes, `pack = false`).

Memory: the corpus is never read whole for `pack = false` or for `tokenizer = "bytes"`. A first
scan indexes where each document lies (8-16 bytes per document, `l3m.data.sources.textindex`);
a sample is read and tokenized in `__getitem__`, in the loader's workers (a byte window is a
range of the stream, read across files with seek). A real tokenizer with `pack = true` needs
every document's token count before it can cut windows, so it still reads and packs the text
in memory, bounded by `max_bytes`: for a large corpus tokenize it once with `l3m data prepare`
and train from the `TokenShards` source, which reads the shards through memory maps.

A malformed JSONL line raises `DataError` naming `file:line` when its sample is read (during
the scan when the scan parses lines: byte streams and capped JSONL), which the loader's
`on_error` policy raises or skips.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from l3m.data import embedded
from l3m.data.segments import pack_with_ends, window_segments
from l3m.data.source_hooks import text_port_problem
from l3m.data.sources.base import Source, Spec, check_split, find_files
from l3m.data.sources.textindex import ByteRanges, DocIndex
from l3m.data.tokenizers import load_tokenizer
from l3m.data.tokenizers.policy import CaptionEncoder, clean_text
from l3m.registry import register

# Packed token streams, shared by the sources of one process (train and eval read the same text).
_PACKED: dict[tuple, np.ndarray] = {}
_ENDS: dict[tuple, np.ndarray] = {}  # the documents' end offsets in each packed stream (for `segments`)
_BIG_CORPUS = 1 << 30  # bytes of text past which packing in memory earns a warning


class ByteStream(Source):
    """Shared machinery: subclasses only say which documents make up the stream (`docs`)."""

    outputs = ("tokens", "targets", "segments?")
    shapes = "-> tokens: long[B, seq_len] < tokenizer_vocab, targets: long[B, seq_len] < tokenizer_vocab, segments: long[B, seq_len]"
    token_policy = "stream"  # how `tokenizer` encodes text (read by the checker too)
    _separator = b""  # between documents in a byte stream

    def __init__(
        self,
        seq_len: int,
        batch_size: int,
        split: str,
        test_fraction: float,
        max_bytes: int,
        shuffle: bool,
        drop_last: bool,
        tokenizer: str = "bytes",
        *,
        pack: bool = True,
        text_clean: str = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        if not pack and tokenizer == "bytes":
            raise ValueError(f"{type(self).__name__}: pack = false needs a tokenizer with an EOS token, "
                             "not \"bytes\"")
        clean_text("", text_clean)  # a bad value fails now
        if text_clean != "none" and tokenizer == "bytes":
            raise ValueError(f"{type(self).__name__}: text_clean only applies with a real tokenizer, not \"bytes\"")
        if pad_token and pack:
            raise ValueError(f"{type(self).__name__}: pad_token only applies with pack = false")
        self.pack, self.text_clean, self.pad_token = pack, text_clean, pad_token
        check_split(split)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if tokenizer != "":  # "" (left to an unset variable) fails when the text is read, so `plan` still works
            try:
                tok = load_tokenizer(tokenizer, self.token_policy)  # a missing or broken file fails now
                if not pack:
                    CaptionEncoder(tok, seq_len + 1, text_clean, pad_token)  # no EOS / unknown pad: now
            except (OSError, ValueError) as e:
                raise type(e)(f"{type(self).__name__}: {e}") from None
        self.tokenizer = tokenizer
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.seq_len, self.split, self.test_fraction, self.max_bytes = (
            seq_len,
            split,
            test_fraction,
            max_bytes,
        )

    def doc_index(self) -> DocIndex:
        """Where the source's documents lie (one scan of its files; see `l3m.data.sources.textindex`)."""
        raise NotImplementedError

    @cached_property
    def index(self) -> DocIndex:
        return self.doc_index()

    @property
    def scan_errors(self) -> list[str]:
        """Lines the index left out under `scan_policy("skip")` (the loader counts them)."""
        return self.index.scan_errors

    def docs(self) -> list[bytes]:
        """The documents of the source, in a fixed order, read whole (only the tokenizer + pack path does)."""
        return [self.index.doc_bytes(k) for k in range(len(self.index))]

    def read(self) -> bytes:
        """Every byte of the source's byte stream (documents joined by the separator, cut at `max_bytes`)."""
        return self.ranges.read(0, self.ranges.size)

    def _capped(self) -> int:
        return self.max_bytes if self.max_bytes > 0 else -1

    def _ids(self) -> np.ndarray:
        """Every token of the source, whole documents encoded and packed with EOS (read into memory)."""
        try:
            tok = load_tokenizer(self.tokenizer, self.token_policy)
        except (OSError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None
        size = sum(p.stat().st_size for p in self.index.files)
        if self.max_bytes <= 0 and size > _BIG_CORPUS:
            warnings.warn(f"{type(self).__name__}: packing {size / 2**30:.1f} GiB of text with a tokenizer reads it "
                          "all into memory; tokenize it once with `l3m data prepare` and train from TokenShards",
                          stacklevel=2)
        docs = self.docs()
        digest = hashlib.blake2b(digest_size=16)
        for d in docs:
            digest.update(len(d).to_bytes(8, "little"))
            digest.update(d)
        texts = [clean_text(d.decode("utf-8", errors="replace"), self.text_clean) for d in docs]
        key = (id(tok), digest.hexdigest(), self.text_clean)
        if key not in _PACKED:
            _PACKED[key], _ENDS[key] = pack_with_ends(tok, texts)
        self._doc_ends = _ENDS[key]
        return _PACKED[key]

    @cached_property
    def encoder(self) -> CaptionEncoder:
        """pack = false: how one document becomes a row."""
        try:
            tok = load_tokenizer(self.tokenizer, self.token_policy)
            return CaptionEncoder(tok, self.seq_len + 1, self.text_clean, self.pad_token)
        except (OSError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None

    @cached_property
    def doc_range(self) -> tuple[int, int]:
        """pack = false: this split's documents, [lo, hi) in the index."""
        n = len(self.index)
        cut = int(n * (1.0 - self.test_fraction))
        lo, hi = (0, cut) if self.split == "train" else (cut, n)
        if hi <= lo:
            raise ValueError(f"{type(self).__name__}: the {self.split} split holds no document "
                             f"({n} in all); give it more documents or another test_fraction")
        return lo, hi

    @cached_property
    def ranges(self) -> ByteRanges:
        """tokenizer = "bytes": the byte stream of every document, read by range."""
        return ByteRanges(self.index, self._separator, self._capped())

    @cached_property
    def byte_range(self) -> tuple[int, int]:
        """tokenizer = "bytes": this split's [lo, hi) in the byte stream."""
        size = self.ranges.size
        cut = int(size * (1.0 - self.test_fraction))
        lo, hi = (0, cut) if self.split == "train" else (cut, size)
        self._check_length(hi - lo, "bytes")
        return lo, hi

    def _check_length(self, n: int, unit: str) -> None:
        if n < self.seq_len + 1:
            raise ValueError(
                f"{type(self).__name__}: the {self.split} split holds {n} {unit}, fewer than "
                f"seq_len + 1 = {self.seq_len + 1}; give it more text or a shorter seq_len"
            )

    @cached_property
    def stream(self) -> torch.Tensor:
        """[n] token ids of this split. With a real tokenizer (pack = true) this is how samples are
        read (once per process, shared with forked workers); with bytes it reads the whole split
        (for inspection: samples are read by range)."""
        if self.tokenizer == "bytes":
            lo, hi = self.byte_range
            return torch.frombuffer(bytearray(self.ranges.read(lo, hi)), dtype=torch.uint8)
        ids = self._ids()
        cut = int(len(ids) * (1.0 - self.test_fraction))
        part = ids[:cut] if self.split == "train" else ids[cut:]
        self._check_length(len(part), "tokens")
        self._stream_start = 0 if self.split == "train" else cut  # where the split starts (for `segments`)
        return torch.from_numpy(part.copy())

    def __len__(self) -> int:
        if not self.pack:
            lo, hi = self.doc_range
            return hi - lo
        if self.tokenizer == "bytes":
            lo, hi = self.byte_range
            return (hi - lo - 1) // self.seq_len
        return (len(self.stream) - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        if not self.pack:
            ids = self.encoder(self.index.text(self.doc_range[0] + i))
            w = torch.tensor(ids, dtype=torch.long)
            return {"tokens": w[:-1], "targets": w[1:]}
        start = i * self.seq_len
        if self.tokenizer == "bytes":
            a = self.byte_range[0] + start
            data = self.ranges.read(a, a + self.seq_len + 1)
            w = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        else:
            w = self.stream[start : start + self.seq_len + 1].long()
            segments = window_segments(self._doc_ends, self._stream_start + start, self.seq_len)
            return {"tokens": w[:-1], "targets": w[1:], "segments": segments}
        return {"tokens": w[:-1], "targets": w[1:]}

    def spec(self) -> Spec:
        spec = {"tokens": ((self.seq_len,), torch.long), "targets": ((self.seq_len,), torch.long)}
        if self.pack and self.tokenizer != "bytes":  # packed documents: their ids within each window
            spec["segments"] = ((self.seq_len,), torch.long)
        return spec

    port_problem = staticmethod(text_port_problem)  # read by `l3m lint` (`l3m.dsl.datacheck`)


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
        tokenizer: str = "bytes",
        pack: bool = True,
        text_clean: Literal["none", "lower", "nopunct"] = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(seq_len, batch_size, split, test_fraction, max_bytes, shuffle, drop_last, tokenizer,
                         pack=pack, text_clean=text_clean, pad_token=pad_token)
        self.root, self.pattern = root, pattern

    def files(self) -> list[Path]:
        if self.root == "stdlib":
            if self.pattern not in ("", "**/*.py"):
                raise ValueError(
                    "root = 'stdlib' reads the standard library's .py files; leave pattern empty"
                )
            return embedded.stdlib_files()
        return find_files(self.root, self.pattern or "**/*")

    def doc_index(self) -> DocIndex:
        return DocIndex(self.files(), None, limit=self._capped())


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
        tokenizer: str = "bytes",
        pack: bool = True,
        text_clean: Literal["none", "lower", "nopunct"] = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(
            root, seq_len, batch_size, split, test_fraction, max_bytes, pattern, shuffle, drop_last, tokenizer,
            pack, text_clean, pad_token,
        )

    def files(self) -> list[Path]:
        return find_files(self.root, self.pattern)


@register("source")
class TextJSONL(ByteStream):
    """Documents from JSON Lines files (`path`: a file or a glob), the string `field` of each
    line, joined by `separator` into one byte stream (with a tokenizer: each followed by EOS instead;
    with `pack = false`: one sample per line, see the module docstring)."""

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
        tokenizer: str = "bytes",
        pack: bool = True,
        text_clean: Literal["none", "lower", "nopunct"] = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(seq_len, batch_size, split, test_fraction, max_bytes, shuffle, drop_last, tokenizer,
                         pack=pack, text_clean=text_clean, pad_token=pad_token)
        self.path, self.field, self.separator = path, field, separator
        self._separator = separator.encode("utf-8")

    def doc_index(self) -> DocIndex:
        stream = self.tokenizer == "bytes"
        return DocIndex(find_files(self.path), self.field, limit=self._capped(),
                        sep_len=len(self._separator) if stream else 0, with_lengths=stream)


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

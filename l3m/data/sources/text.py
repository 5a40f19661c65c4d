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
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from l3m.data import embedded
from l3m.data.sources.base import Source, Spec, check_split, find_files
from l3m.data.tokenizers import load_tokenizer
from l3m.data.tokenizers.policy import CaptionEncoder, clean_text, pack_documents
from l3m.registry import register

# Packed token streams (or per-document rows), shared by the sources of one process (train and eval
# read the same text).
_PACKED: dict[tuple, np.ndarray] = {}
_ROWS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


class ByteStream(Source):
    """Shared machinery: subclasses only say which documents make up the stream (`docs`)."""

    outputs = ("tokens", "targets")
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

    def docs(self) -> list[bytes]:
        """The documents of the source, in a fixed order; reading may stop past `max_bytes`."""
        raise NotImplementedError

    def read(self) -> bytes:
        """Every byte of the source, documents joined by the source's separator."""
        return self._separator.join(self.docs())

    def _capped(self) -> int:
        return self.max_bytes if self.max_bytes > 0 else -1

    def _ids(self) -> np.ndarray:
        """Every token of the source: bytes, or whole documents encoded and packed with EOS."""
        if self.tokenizer == "bytes":
            data = self.read()
            if self.max_bytes > 0:
                data = data[: self.max_bytes]
            return np.frombuffer(data, dtype=np.uint8)
        try:
            tok = load_tokenizer(self.tokenizer, self.token_policy)
        except (OSError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None
        docs = self.docs()
        digest = hashlib.blake2b(digest_size=16)
        for d in docs:
            digest.update(len(d).to_bytes(8, "little"))
            digest.update(d)
        texts = [clean_text(d.decode("utf-8", errors="replace"), self.text_clean) for d in docs]
        key = (id(tok), digest.hexdigest(), self.text_clean)
        if key not in _PACKED:
            _PACKED[key] = pack_documents(tok, texts)
        return _PACKED[key]

    def _encoder(self) -> CaptionEncoder:
        try:
            tok = load_tokenizer(self.tokenizer, self.token_policy)
            return CaptionEncoder(tok, self.seq_len + 1, self.text_clean, self.pad_token)
        except (OSError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None

    @cached_property
    def rows(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """pack = false: this split's documents, encoded and cut but unpadded (flat ids, offsets), and the pad id."""
        enc = self._encoder()
        docs = self.docs()
        digest = hashlib.blake2b(digest_size=16)
        for d in docs:
            digest.update(len(d).to_bytes(8, "little"))
            digest.update(d)
        key = (id(enc.tok), digest.hexdigest(), self.text_clean, self.seq_len, enc.pad_id)
        if key not in _ROWS:
            _ROWS[key] = enc.rows([d.decode("utf-8", errors="replace") for d in docs])
        flat, offsets = _ROWS[key]
        n = len(offsets) - 1
        cut = int(n * (1.0 - self.test_fraction))
        lo, hi = (0, cut) if self.split == "train" else (cut, n)
        if hi <= lo:
            raise ValueError(f"{type(self).__name__}: the {self.split} split holds no document "
                             f"({n} in all); give it more documents or another test_fraction")
        return torch.from_numpy(flat.copy()), torch.from_numpy(offsets[lo : hi + 1].copy()), enc.pad_id

    @cached_property
    def stream(self) -> torch.Tensor:
        """[n] token ids of this split (read once per process, shared with forked workers)."""
        ids = self._ids()
        cut = int(len(ids) * (1.0 - self.test_fraction))
        part = ids[:cut] if self.split == "train" else ids[cut:]
        if len(part) < self.seq_len + 1:
            unit = "bytes" if self.tokenizer == "bytes" else "tokens"
            raise ValueError(
                f"{type(self).__name__}: the {self.split} split holds {len(part)} {unit}, fewer than "
                f"seq_len + 1 = {self.seq_len + 1}; give it more text or a shorter seq_len"
            )
        return torch.from_numpy(part.copy())

    def __len__(self) -> int:
        if not self.pack:
            return len(self.rows[1]) - 1
        return (len(self.stream) - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        if not self.pack:
            flat, offsets, pad = self.rows
            w = torch.full((self.seq_len + 1,), pad, dtype=torch.long)
            ids = flat[offsets[i] : offsets[i + 1]].long()
            w[: len(ids)] = ids
            return {"tokens": w[:-1], "targets": w[1:]}
        start = i * self.seq_len
        w = self.stream[start : start + self.seq_len + 1].long()
        return {"tokens": w[:-1], "targets": w[1:]}

    def spec(self) -> Spec:
        return {"tokens": ((self.seq_len,), torch.long), "targets": ((self.seq_len,), torch.long)}


def read_text_files(files: list[Path], limit: int) -> bytes:
    """Concatenated bytes of the UTF-8 files among `files` (others skipped), stopping past `limit` (-1: all)."""
    return b"".join(read_text_docs(files, limit))


def read_text_docs(files: list[Path], limit: int) -> list[bytes]:
    """The UTF-8 files among `files` (others skipped), one document each, stopping past `limit` (-1: all)."""
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
    return chunks


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

    def docs(self) -> list[bytes]:
        return read_text_docs(self.files(), self._capped())


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

    def docs(self) -> list[bytes]:
        sep = self._separator if self.tokenizer == "bytes" else b""
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
                    return chunks
        return chunks


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

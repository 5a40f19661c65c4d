"""How a source turns text into ids: captions (CLIP/AIMv2 style) and packed documents (LLM style).

- **caption** (the original's `HFTokenizer.__call__`, context 77): optional text cleaning, then
  `[BOS] + ids + [EOS]` (BOS only when the tokenizer has one: CLIP's does, SigLIP's does not),
  the ids truncated so that the EOS always stays, right-padded with the pad id to exactly
  `context`. The pad id is the tokenizer's pad token, or its EOS when it has none (as
  `transformers` pads CLIP and SigLIP), or the token the file names with `pad_token`.
  With `pack = false` an LLM text source encodes each document this way too (context
  `seq_len + 1`), as the original's `SimpleTextDataset` does with each row.
- **stream**: every document's ids followed by EOS (when the tokenizer has one), all documents
  concatenated into one stream that the source cuts into `seq_len + 1` windows.
"""

from __future__ import annotations

import html
import re
import string
from typing import Literal

import numpy as np

from l3m.data.tokenizers.base import Tokenizer, TokenizerError

TextClean = Literal["none", "lower", "nopunct"]
_PUNCT = str.maketrans("", "", string.punctuation)


def clean_text(text: str, clean: str = "none") -> str:
    """`none`: as is. `lower`: the original's caption cleaning (ftfy when installed, HTML entities
    unescaped twice, white space collapsed, stripped) and lower-casing. `nopunct`: `lower` with
    ASCII punctuation removed, as the SigLIP tokenizer of `transformers` also does."""
    if clean == "none":
        return text
    if clean not in ("lower", "nopunct"):
        raise ValueError(f"text_clean must be 'none', 'lower' or 'nopunct', got {clean!r}")
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    text = re.sub(r"\s+", " ", text).strip().lower()
    if clean == "nopunct":
        text = re.sub(r"\s+", " ", text.translate(_PUNCT)).strip()
    return text


class CaptionEncoder:
    """Fixed-length captions: `encoder(text)` -> `context` ids (see the module docstring)."""

    def __init__(self, tok: Tokenizer, context: int, clean: str = "none", pad_token: str = "",
                 bos: bool = True) -> None:
        if tok.eos_id is None:
            raise TokenizerError(f"{tok.source}: the tokenizer has no EOS token, which a caption needs")
        if pad_token:
            pad = tok.special_id(pad_token)
            if pad is None:
                raise TokenizerError(f"{tok.source}: pad_token {pad_token!r} is not in the tokenizer's vocabulary")
        else:
            pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        self.tok, self.context, self.clean = tok, context, clean
        self.bos_id = tok.bos_id if bos else None
        self.eos_id, self.pad_id = tok.eos_id, pad
        self._specials = 1 + (self.bos_id is not None)
        if context < self._specials:
            raise ValueError(f"a caption needs seq_len >= {self._specials} (its special tokens), got {context}")
        clean_text("", clean)  # validate `clean` now, not at the first sample

    def ids(self, text: str) -> list[int]:
        """The whole caption, specials included, before truncation and padding."""
        head = [self.bos_id] if self.bos_id is not None else []
        return head + self.tok.encode(clean_text(text, self.clean)) + [self.eos_id]

    def length(self, text: str) -> int:
        return len(self.ids(text))

    def fit(self, ids: list[int]) -> list[int]:
        """`ids` (specials included) cut to `context` so that the EOS stays; not padded."""
        return ids[: self.context - 1] + [self.eos_id] if len(ids) > self.context else ids

    def __call__(self, text: str) -> list[int]:
        ids = self.fit(self.ids(text))
        return ids + [self.pad_id] * (self.context - len(ids))

    def rows(self, texts: list[str], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Every text as one caption, unpadded (pad at use): flat int32 ids and int64 offsets [len + 1]."""
        head = [self.bos_id] if self.bos_id is not None else []
        flat: list[np.ndarray] = []
        lengths = [0]
        for start in range(0, len(texts), chunk):
            cleaned = [clean_text(t, self.clean) for t in texts[start : start + chunk]]
            for ids in self.tok.encode_batch(cleaned):
                row = self.fit(head + ids + [self.eos_id])
                flat.append(np.asarray(row, dtype=np.int32))
                lengths.append(len(row))
        ids_all = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int32)
        return ids_all, np.cumsum(np.asarray(lengths, dtype=np.int64))

    def batch(self, texts: list[str]) -> np.ndarray:
        """int64 [len(texts), context]."""
        return np.array([self(t) for t in texts], dtype=np.int64).reshape(len(texts), self.context)

    def decode(self, ids) -> str:
        """The text of one caption: the ids after BOS up to the first EOS (pads and specials dropped)."""
        out = []
        for i in (int(x) for x in ids):
            if i == self.eos_id:
                break
            if i not in (self.bos_id, self.pad_id):
                out.append(i)
        return self.tok.decode(out)


def pack_documents(tok: Tokenizer, docs: list[str], chunk: int = 256) -> np.ndarray:
    """One stream of ids: each document followed by EOS (if the tokenizer has one). int32 [n]."""
    eos = tok.eos_id
    parts: list[np.ndarray] = []
    for start in range(0, len(docs), chunk):
        for ids in tok.encode_batch(docs[start : start + chunk]):
            parts.append(np.asarray(ids + ([eos] if eos is not None else []), dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

"""Document ids of packed token windows: the `segments` port.

A packed source concatenates documents (each followed by its EOS) and cuts the stream into
windows. Its optional `segments` port gives, for every `tokens` position of a window, the index of
the document that position belongs to *within the window*: 0 for the document the window starts
in, then 1, 2, ... at each new document; an EOS belongs to the document it closes. `DocumentMask`
reads it so that attention never crosses a document boundary. The ids come from the recorded
document lengths, not from looking for EOS ids in the stream, so a document whose text happens to
encode to the EOS id is still one document.
"""

from __future__ import annotations

import numpy as np
import torch

from l3m.data.tokenizers.base import Tokenizer


def pack_with_ends(tok: Tokenizer, docs: list[str], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The stream of `l3m.data.tokenizers.policy.pack_documents` (each document's ids, then EOS if
    the tokenizer has one; int32) and every document's end offset in it (exclusive; int64)."""
    eos = tok.eos_id
    parts: list[np.ndarray] = []
    for start in range(0, len(docs), chunk):
        for ids in tok.encode_batch(docs[start : start + chunk]):
            parts.append(np.asarray(ids + ([eos] if eos is not None else []), dtype=np.int32))
    if not parts:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    ends = np.cumsum([len(p) for p in parts], dtype=np.int64)
    return np.concatenate(parts), ends


def window_segments(ends: np.ndarray, start: int, length: int) -> torch.Tensor:
    """Document ids (int64 `[length]`, from 0) of stream positions `start .. start + length - 1`,
    given the documents' exclusive end offsets `ends` (sorted)."""
    pos = np.arange(start, start + length, dtype=np.int64)
    doc = np.searchsorted(ends, pos, side="right")
    return torch.from_numpy(doc - doc[0]) if length else torch.zeros(0, dtype=torch.long)

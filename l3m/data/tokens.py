"""Byte tokenisation: l3m's built-in tokenizer (`tokenizer = "bytes"`). Learned vocabularies
(`tokenizers` JSON, SentencePiece) live in `l3m.data.tokenizers`, which also wraps these two
conventions as `Tokenizer`s.

Two conventions, because language modelling and captions want different things:

- **raw bytes** (`TextBytes`, `TextFiles`, `TextJSONL`): token = byte value, vocabulary 256. A
  stream of text has no padding and no sequence boundaries to mark.
- **captions** (`DigitsImageText`, `ImageTextJSONL`, `HFDataset` text): fixed-length sequences
  that need padding and a marked end, so ids 0-2 are reserved and bytes are shifted by
  `BYTE_OFFSET`: `[BOS, b0+3, b1+3, ..., EOS, PAD, PAD, ...]`, vocabulary `CAPTION_VOCAB` (259).
  The EOS is always present (captions are truncated to make room), so a text encoder can pool at
  it (`eos_index`).
"""

from __future__ import annotations

import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
BYTE_VOCAB = 256
CAPTION_VOCAB = 256 + BYTE_OFFSET


def caption_length(text: str) -> int:
    """Tokens `text` needs as a caption, BOS and EOS included (to check that a seq_len fits)."""
    return len(text.encode("utf-8")) + 2


def encode_caption(text: str, seq_len: int) -> torch.Tensor:
    """`text` as a caption: long [seq_len], BOS + shifted bytes + EOS, right-padded with PAD."""
    if seq_len < 2:
        raise ValueError(f"a caption needs seq_len >= 2 (BOS and EOS), got {seq_len}")
    body = list(text.encode("utf-8")[: seq_len - 2])
    out = torch.full((seq_len,), PAD_ID, dtype=torch.long)
    out[0] = BOS_ID
    if body:
        out[1 : 1 + len(body)] = torch.tensor(body, dtype=torch.long) + BYTE_OFFSET
    out[1 + len(body)] = EOS_ID
    return out


def encode_captions(texts: list[str], seq_len: int) -> torch.Tensor:
    """Several captions: long [len(texts), seq_len] (e.g. class prompts for zero-shot)."""
    return (
        torch.stack([encode_caption(t, seq_len) for t in texts])
        if texts
        else torch.empty(0, seq_len, dtype=torch.long)
    )


def decode_caption(ids: torch.Tensor) -> str:
    """Inverse of `encode_caption`: the bytes between BOS and the first EOS/PAD."""
    out = bytearray()
    for i in ids.tolist():
        if i in (EOS_ID, PAD_ID):
            break
        if i >= BYTE_OFFSET:
            out.append(i - BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")


def eos_index(ids: torch.Tensor) -> torch.Tensor:
    """Position of the first EOS in each row of long [..., N] caption ids: long [...]."""
    return (ids == EOS_ID).int().argmax(dim=-1)

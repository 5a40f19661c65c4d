"""Caption encoding shared by the image-text sources: a `CaptionEncoder` built from their arguments.

`tokenizer = "bytes"` keeps l3m's byte captions (vocabulary 259: PAD 0, BOS 1, EOS 2, bytes + 3);
anything else is a real tokenizer (`l3m.data.tokenizers`), encoded with the caption policy of
`l3m.data.tokenizers.policy`. Errors name the source, and come at construction, not at a batch.
"""

from __future__ import annotations

import torch

from l3m.data.tokenizers import load_tokenizer
from l3m.data.tokenizers.policy import CaptionEncoder

CAPTION_POLICY = "caption"


def caption_encoder(owner: str, tokenizer: str, seq_len: int, text_clean: str = "none",
                    pad_token: str = "") -> CaptionEncoder | Unset:
    """The source's encoder. `tokenizer = ""` (left to an unset variable) gives an `Unset` that
    fails on first use, so that a source still builds for `plan` (its `spec()` needs no tokenizer)."""
    if tokenizer == "":
        return Unset(owner)
    try:
        return CaptionEncoder(load_tokenizer(tokenizer, CAPTION_POLICY), seq_len, text_clean, pad_token)
    except (OSError, ValueError) as e:
        raise type(e)(f"{owner}: {e}") from None


class Unset:
    """The encoder of a source whose tokenizer was not given: every use raises a clear error."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def require(self) -> None:
        try:
            load_tokenizer("")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.owner}: {e}") from None

    def __call__(self, text: str) -> list[int]:
        self.require()
        raise AssertionError  # unreachable

    length = batch = __call__


def require(encoder: CaptionEncoder | Unset) -> None:
    """Raise now (in the main process, e.g. from `__len__`) if the source has no tokenizer."""
    if isinstance(encoder, Unset):
        encoder.require()


def encode(encoder: CaptionEncoder, text: str) -> torch.Tensor:
    """long [seq_len]: one caption."""
    return torch.tensor(encoder(text), dtype=torch.long)


def encode_many(encoder: CaptionEncoder, texts: list[str]) -> torch.Tensor:
    """long [len(texts), seq_len]: several captions (e.g. zero-shot class prompts)."""
    return torch.from_numpy(encoder.batch(texts))

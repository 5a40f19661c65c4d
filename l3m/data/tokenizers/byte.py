"""The two byte tokenizers: raw bytes for text streams, shifted bytes with specials for captions.

They are the `l3m.data.tokens` conventions as `Tokenizer`s, so that every source and the
checker treat bytes and learned vocabularies alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from l3m.data.tokenizers.base import Tokenizer

_SPECIAL_NAMES = ("<pad>", "<bos>", "<eos>")


class ByteTokenizer(Tokenizer):
    """Token = byte value, vocabulary 256, no special tokens (a stream has no boundaries to mark)."""

    kind = "bytes"

    def __init__(self) -> None:
        super().__init__("bytes", 256, {})

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        data = token.encode("utf-8")
        return data[0] if len(data) == 1 else None

    def id_to_token(self, i: int) -> str | None:
        return bytes([i]).decode("latin-1") if 0 <= i < 256 else None


class CaptionByteTokenizer(Tokenizer):
    """Bytes shifted by 3 under PAD=0, BOS=1, EOS=2 (vocabulary 259): `l3m.data.tokens`' captions."""

    kind = "bytes"

    def __init__(self) -> None:
        super().__init__("bytes", 259, {"pad": (0, "<pad>"), "bos": (1, "<bos>"), "eos": (2, "<eos>")})

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        if token in _SPECIAL_NAMES:
            return _SPECIAL_NAMES.index(token)
        data = token.encode("utf-8")
        return data[0] + 3 if len(data) == 1 else None

    def id_to_token(self, i: int) -> str | None:
        if 0 <= i < 3:
            return _SPECIAL_NAMES[i]
        return bytes([i - 3]).decode("latin-1") if 3 <= i < 259 else None

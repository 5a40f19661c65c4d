"""Hugging Face `tokenizers` files (`tokenizer.json`): BPE, WordPiece, Unigram, byte-level or not.

Special roles come from the `special_tokens_map.json` / `tokenizer_config.json` beside a
`tokenizer.json` when a Hugging Face snapshot folder holds them (so CLIP pads with
`<|endoftext|>` as `transformers` does), otherwise from conventional token names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from l3m.data.tokenizers.base import (
    CONVENTIONAL,
    Tokenizer,
    TokenizerError,
    find_role_tokens,
    side_file_roles,
)


class HFTokenizer(Tokenizer):
    kind = "tokenizers"

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tok

        try:
            tok = _Tok.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception for bad JSON / schema
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({_first_line(e)})") from None
        self._tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        size = max(vocab.values(), default=-1) + 1
        specials = find_role_tokens(CONVENTIONAL, self._special_lookup(tok))
        specials.update(side_file_roles(path, tok.token_to_id))
        super().__init__(str(path), size, specials)

    @staticmethod
    def _special_lookup(tok):
        added = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
        return lambda name: added.get(name, tok.token_to_id(name))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

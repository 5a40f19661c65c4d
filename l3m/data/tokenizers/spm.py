"""SentencePiece models (`spiece.model`, `tokenizer.model`): SigLIP's, T5's, Llama 2's tokenizers.

The model file knows its special ids (`bos_id`, `eos_id`, `pad_id`, `unk_id`; -1 = none). A
Hugging Face `special_tokens_map.json` beside it overrides them, as `transformers` would (SigLIP
pads with `</s>`, id 1, not with its `<pad>`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from l3m.data.tokenizers.base import Tokenizer, TokenizerError, side_file_roles


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: Path) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise TokenizerError(f"{path}: reading a SentencePiece model needs `pip install sentencepiece`") from None
        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{path}: not a SentencePiece model ({str(e).strip() or type(e).__name__})") from None
        self._sp = sp
        size = sp.GetPieceSize()
        specials = {}
        for role, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id()), ("unk", sp.unk_id())):
            if 0 <= i < size:
                specials[role] = (i, sp.IdToPiece(i))
        specials.update(side_file_roles(path, self.token_to_id))
        super().__init__(str(path), size, specials)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(x) for x in self._sp.EncodeAsIds(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.PieceToId(token)
        # PieceToId answers unk for unknown pieces: only the unk piece itself maps there.
        return None if i == self._sp.unk_id() and token != self._sp.IdToPiece(i) else i

    def id_to_token(self, i: int) -> str | None:
        return self._sp.IdToPiece(i) if 0 <= i < self.vocab_size else None

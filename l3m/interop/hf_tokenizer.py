"""A run's tokenizer as Hugging Face tokenizer files (`tokenizer.json` + `tokenizer_config.json`),
so that `AutoTokenizer.from_pretrained(OUT)` encodes text to the ids the model was trained on.

- a `tokenizers` file (a trained BPE, a shipped one such as `stdlib_bpe_2k`, a Hugging Face
  `tokenizer.json`): copied as it is, with its special tokens named in `tokenizer_config.json`;
- `"bytes"`: a `tokenizers` BPE with no merges over the 256 byte-level symbols, token i = byte i
  (for captions' shifted bytes, i + 3 under `<pad>`, `<bos>`, `<eos>` = 0, 1, 2), so ids are
  exactly l3m's; decoding turns the symbols back into bytes;
- a SentencePiece `.model`: not converted (l3m's reading of it may differ from transformers'
  Llama conventions); copy it into the folder yourself. The export says so.

l3m encodes without adding special tokens; so does the exported tokenizer with
`add_special_tokens=False` (a copied `tokenizer.json` keeps its own post-processor otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

from l3m.data.tokenizers.base import ROLES, Tokenizer
from l3m.data.tokenizers.byte import ByteTokenizer, CaptionByteTokenizer
from l3m.durable import atomic_output


def byte_symbols() -> list[str]:
    """The printable symbol standing for each byte in byte-level BPE vocabularies (GPT-2's
    convention: printable Latin-1 bytes stand for themselves, the others are moved to 256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def byte_tokenizer_json(shift: int = 0, specials: tuple[str, ...] = ()) -> str:
    """A `tokenizers` JSON whose ids are bytes (+ `shift`), `specials` taking ids 0 .. shift-1."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    vocab = {s: i for i, s in enumerate(specials)}
    vocab |= {sym: b + shift for b, sym in enumerate(byte_symbols())}
    tok = HFTok(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if specials:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok.to_str(pretty=True)


def _tokenizer_json(tok: Tokenizer) -> str | None:
    if isinstance(tok, CaptionByteTokenizer):
        return byte_tokenizer_json(3, ("<pad>", "<bos>", "<eos>"))
    if isinstance(tok, ByteTokenizer):
        return byte_tokenizer_json()
    if tok.kind == "tokenizers":
        return Path(tok.source).read_text(encoding="utf-8")
    return None


def write_tokenizer(tok: Tokenizer, out_dir: str | Path, model_max_length: int | None = None) -> list[str]:
    """Write `tok` into `out_dir`; returns the file names written ([] when its kind is not
    exported, see the module doc)."""
    text = _tokenizer_json(tok)
    if text is None:
        return []
    out = Path(out_dir)
    with atomic_output(out / "tokenizer.json") as tmp:
        tmp.write_text(text, encoding="utf-8")
    config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    for role in ROLES:
        if role in tok.specials:
            config[f"{role}_token"] = tok.specials[role][1]
    with atomic_output(out / "tokenizer_config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return ["tokenizer.json", "tokenizer_config.json"]


def not_exported_note(tok: Tokenizer) -> str | None:
    """Why `tok` was not written, for the command's output (None when it is written)."""
    if _tokenizer_json(tok) is not None:
        return None
    return (f"the run's tokenizer ({tok.kind}: {tok.source}) is not exported; copy it into the folder "
            "(transformers reads SentencePiece .model files through its own converters)")

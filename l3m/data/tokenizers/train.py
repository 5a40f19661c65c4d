"""Train a byte-level BPE tokenizer (`tokenizers`) on local text: `l3m tokenizer train`.

Byte-level means every UTF-8 byte is in the base alphabet, so any text encodes and decodes back
exactly (no unknown token). Special tokens take the first ids, in the order given
(default `<pad>` 0, `<bos>` 1, `<eos>` 2), so a file can name them by id stably.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from l3m.data.sources.base import find_files

DEFAULT_SPECIALS = ("<pad>", "<bos>", "<eos>")
# Corpus shorthands: names that stand for text that ships with the install.
SHORTHANDS = ("stdlib", "digits")


def corpus_files(items: list[str], pattern: str = "**/*") -> list[Path]:
    """The files named by `items` (files, directories searched with `pattern`, globs, or `stdlib`)."""
    from l3m.data import embedded

    files: list[Path] = []
    for item in items:
        if item == "stdlib":
            files += embedded.stdlib_files()
        elif item != "digits":
            files += find_files(item, pattern)
    return files


def iter_documents(items: list[str], pattern: str = "**/*", max_bytes: int = 0) -> Iterator[str]:
    """The UTF-8 documents of the corpus in a fixed order (files that are not UTF-8 are skipped),
    stopping once `max_bytes` (> 0) have been read; `digits` is every digit caption l3m makes."""
    total = 0
    if "digits" in items:
        yield from digit_captions()
    for path in corpus_files(items, pattern):
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield text
        total += len(data)
        if 0 < max_bytes <= total:
            return


def digit_captions() -> list[str]:
    """Every caption `DigitsImageText` can draw with its default templates, one per line."""
    from l3m.data import embedded
    from l3m.data.sources.digits import _DIGIT_TEMPLATES

    return [t.format(n) for t in _DIGIT_TEMPLATES for n in embedded.DIGIT_NAMES]


def train_bpe(items: list[str], vocab: int, output: str, specials: tuple[str, ...] = DEFAULT_SPECIALS,
              min_frequency: int = 2, pattern: str = "**/*", max_bytes: int = 0, progress: bool = True) -> dict:
    """Train, save to `output` (a tokenizer.json) and return a summary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    base = 256 + len(specials)
    if vocab < base:
        raise ValueError(f"--vocab must be at least {base} (256 bytes + {len(specials)} special tokens), got {vocab}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must differ, got {list(specials)}")
    docs = list(iter_documents(items, pattern, max_bytes))
    if not docs:
        raise ValueError("the corpus holds no UTF-8 text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=min_frequency,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress and sys.stderr.isatty(),
    )
    tok.train_from_iterator(docs, trainer, length=len(docs))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=False)
    return {
        "output": str(out),
        "vocab_size": tok.get_vocab_size(),
        "documents": len(docs),
        "bytes": sum(len(d.encode("utf-8")) for d in docs),
        "specials": {s: tok.token_to_id(s) for s in specials},
    }

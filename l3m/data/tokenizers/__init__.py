"""Tokenizers read from local files: one small interface over bytes, `tokenizers` JSON and SentencePiece.

A source's `tokenizer` argument names one of:

- `"bytes"`: l3m's byte tokenizer (vocabulary 256 for text streams; 259 with PAD/BOS/EOS for captions);
- a name shipped with l3m (`l3m tokenizer list`), e.g. `"stdlib_bpe_2k"`, small tokenizers for the examples;
- a path: a Hugging Face `tokenizer.json` (any `.json`), a SentencePiece `.model`, or a Hugging Face
  snapshot folder holding either (its `special_tokens_map.json` then names the special tokens);
- `""`: not given; the file leaves it to an environment variable that is unset. Lint skips the
  checks; a run stops with a message.

Nothing is ever downloaded. Loaded tokenizers are cached per process (by path and modification time).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from l3m.data.tokenizers.base import ROLES, Tokenizer, TokenizerError
from l3m.data.tokenizers.byte import ByteTokenizer, CaptionByteTokenizer

SHIPPED_DIR = Path(__file__).parent / "shipped"
# How a source turns text into ids; decides what "bytes" means (see l3m.data.tokenizers.policy).
POLICIES = ("stream", "caption")
_CACHE: dict[tuple, Tokenizer] = {}


def shipped() -> dict[str, Path]:
    """The tokenizers that ship with l3m, by name (file stem)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.json"))}


def resolve_path(spec: str) -> Path:
    """The file a (non-bytes) spec names; FileNotFoundError with a clear message if there is none."""
    if not spec:
        raise FileNotFoundError(
            "no tokenizer given (tokenizer = \"\"): the file leaves it to an environment variable that is "
            "not set; set it to a tokenizer.json, a SentencePiece .model or a Hugging Face snapshot folder"
        )
    names = shipped()
    if spec in names:
        return names[spec]
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        for name in ("tokenizer.json", "spiece.model", "tokenizer.model", "sentencepiece.model"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"tokenizer folder {spec!r} holds no tokenizer.json or SentencePiece .model")
    if not path.exists():
        hint = "" if ("/" in spec or "." in spec) else f" (shipped tokenizers: {', '.join(names) or 'none'})"
        raise FileNotFoundError(f"no such tokenizer file: {spec!r}{hint}")
    return path


def load_tokenizer(spec: str, policy: str = "stream") -> Tokenizer:
    """The tokenizer `spec` names (see the module docstring); `policy` only matters for `"bytes"`.

    Raises FileNotFoundError when the file is missing and TokenizerError when it is unusable.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if spec == "bytes":
        return CaptionByteTokenizer() if policy == "caption" else ByteTokenizer()
    path = resolve_path(spec)
    try:
        st = path.stat()
    except OSError as e:
        raise FileNotFoundError(f"cannot read tokenizer {spec!r}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # a link to /dev/zero or a FIFO would hang `l3m lint`
        raise TokenizerError(f"tokenizer {spec!r} is not a regular file")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE[key] = _open(path)
    return _CACHE[key]


def _open(path: Path) -> Tokenizer:
    suffix = path.suffix.lower()
    if suffix == ".json":
        from l3m.data.tokenizers.hf import HFTokenizer

        return HFTokenizer(path)
    if suffix == ".model":
        from l3m.data.tokenizers.spm import SentencePieceTokenizer

        return SentencePieceTokenizer(path)
    raise TokenizerError(
        f"{path}: unknown tokenizer format {suffix or '(no suffix)'!r}; l3m reads Hugging Face "
        "tokenizer .json files and SentencePiece .model files"
    )


__all__ = [
    "POLICIES",
    "ROLES",
    "ByteTokenizer",
    "CaptionByteTokenizer",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
    "resolve_path",
    "shipped",
]

"""What every tokenizer is to l3m: text <-> ids, a vocabulary size and named special ids.

Kept free of torch so that `lint` can open a tokenizer to check a file's vocabulary sizes and
special ids. The encoding *policies* (captions, packed documents) live in `policy.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

# The special roles a file or a policy can ask for by name.
ROLES = ("bos", "eos", "pad", "unk")


class TokenizerError(ValueError):
    """A tokenizer file that exists but cannot be used (corrupt, unknown format, missing token)."""


class Tokenizer:
    """Base class. Subclasses set `kind`, `vocab_size`, `specials` and implement the codecs.

    `specials` maps a role (`bos`, `eos`, `pad`, `unk`) to `(id, token text)`; a role a tokenizer
    does not have is absent. `source` says where the tokenizer came from (a path or a name).
    """

    kind: str = ""

    def __init__(self, source: str, vocab_size: int, specials: dict[str, tuple[int, str]]) -> None:
        self.source, self.vocab_size, self.specials = source, vocab_size, dict(specials)

    # -- codecs ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no special tokens added (policies add them)."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """The id of the literal token `token`, or None when the vocabulary lacks it."""
        raise NotImplementedError

    def id_to_token(self, i: int) -> str | None:
        raise NotImplementedError

    # -- special ids -------------------------------------------------------------------------
    def special_id(self, name: str) -> int | None:
        """A role (`"eos"`) or a literal token (`"</s>"`) -> its id; None if the tokenizer lacks it."""
        if name in ROLES:
            hit = self.specials.get(name)
            return hit[0] if hit else None
        return self.token_to_id(name)

    @property
    def bos_id(self) -> int | None:
        return self.special_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self.special_id("eos")

    @property
    def pad_id(self) -> int | None:
        return self.special_id("pad")

    def describe_id(self, i: int) -> str:
        """`49407 ('<|endoftext|>')`, for messages."""
        tok = self.id_to_token(i) if 0 <= i < self.vocab_size else None
        return f"{i} ({tok!r})" if tok is not None else str(i)

    def summary(self, name: str | None = None) -> str:
        """`tokenizer 'NAME' (kind): vocabulary N; bos ..., eos ..., pad ...`."""
        roles = ", ".join(f"{r} {self.describe_id(i)}" for r, (i, _) in sorted(self.specials.items()))
        return (f"tokenizer {name or self.source!r} ({self.kind}): vocabulary {self.vocab_size}"
                + (f"; {roles}" if roles else ""))

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def find_role_tokens(candidates: dict[str, tuple[str, ...]], lookup) -> dict[str, tuple[int, str]]:
    """Roles found by conventional token names (`</s>`, `<|endoftext|>`, ...) through `lookup(token) -> id`."""
    out: dict[str, tuple[int, str]] = {}
    for role, names in candidates.items():
        for name in names:
            i = lookup(name)
            if i is not None:
                out[role] = (i, name)
                break
    return out


# Conventional spellings of each role, most specific first.
CONVENTIONAL = {
    "bos": ("<|startoftext|>", "<|begin_of_text|>", "<bos>", "<s>", "<|bos|>"),
    "eos": ("<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>", "<|eos|>"),
    "pad": ("<pad>", "<|padding|>", "<|pad|>", "[PAD]"),
    "unk": ("<unk>", "<|unk|>", "[UNK]"),
}


# Hugging Face side files that name a snapshot's special tokens (later files win).
SIDE_FILES = ("special_tokens_map.json", "tokenizer_config.json")


def side_file_roles(path, lookup) -> dict[str, tuple[int, str]]:
    """Roles named by the Hugging Face side files beside `path`, through `lookup(token) -> id | None`."""
    import json
    from pathlib import Path

    out: dict[str, tuple[int, str]] = {}
    for name in SIDE_FILES:
        side = Path(path).parent / name
        if not side.is_file():
            continue
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{side}: not readable JSON ({e})") from None
        for role in ROLES:
            value = data.get(f"{role}_token") if isinstance(data, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            i = lookup(value) if isinstance(value, str) else None
            if i is not None:
                out[role] = (i, value)
    return out

"""The on-disk layout of a token-shard directory, shared by `l3m data prepare` and `TokenShards`.

    DIR/manifest.json            written last: the job, the tokenizer, dtype and every shard's counts
    DIR/shard_000000.bin         the shard's token ids, little-endian uint16 (vocab <= 65536) or uint32
    DIR/shard_000000.docs.npy    int64 [documents]: where each document ends (exclusive, in shard tokens)
    DIR/prepare.json             written first: the job, so that a re-run can resume it (or refuse another)

Each document is followed by the tokenizer's EOS (when it has one) and belongs to exactly one shard,
so shard boundaries are document boundaries. Kept free of torch: lint reads manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "l3m-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
INTENT = "prepare.json"
DTYPES = {"uint16": "<u2", "uint32": "<u4"}


class ManifestError(ValueError):
    """A token-shard directory that exists but cannot be used (corrupt or foreign manifest, bad shard)."""


def dtype_for(vocab_size: int) -> str:
    """The narrowest shard dtype that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def shard_names(i: int) -> tuple[str, str]:
    """(tokens file, document-ends file) of shard `i`."""
    return f"shard_{i:06d}.bin", f"shard_{i:06d}.docs.npy"


def canonical(obj: Any) -> bytes:
    """The bytes a JSON document is stored (and hashed) as: sorted keys, fixed layout."""
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def job_id(job: dict) -> str:
    return hashlib.sha256(canonical(job)).hexdigest()[:32]


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: the {what} is not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: the {what} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the {what} is not a JSON object")
    return data


def read_manifest(root: str | os.PathLike) -> dict:
    """The checked manifest of a token-shard directory.

    FileNotFoundError when the directory or its manifest is missing (not prepared, or not here);
    ManifestError when it is there but unusable.
    """
    root = Path(os.path.expanduser(os.fspath(root)))
    if not root.is_dir():
        raise FileNotFoundError(f"no token-shard directory {os.fspath(root)!r} (make one with `l3m data prepare`)")
    path = root / MANIFEST
    if not path.is_file():
        hint = ("a prepare into it was interrupted: re-run the same `l3m data prepare` to finish it"
                if (root / INTENT).is_file() else "make it with `l3m data prepare`")
        raise FileNotFoundError(f"{os.fspath(root)!r} holds no {MANIFEST} ({hint})")
    m = read_json(path, "manifest")
    if m.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a token-shard manifest (format {m.get('format')!r}, expected {FORMAT!r})")
    if m.get("version") != VERSION:
        raise ManifestError(f"{path}: token-shard format version {m.get('version')!r}; this l3m reads {VERSION}")
    try:
        tok = m["tokenizer"]
        vocab, eos, dtype = int(tok["vocab_size"]), tok["eos_id"], m["dtype"]
        shards = [(str(s["file"]), str(s["docs"]), int(s["tokens"]), int(s["documents"])) for s in m["shards"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{path}: a required field is missing or malformed ({type(e).__name__}: {e})") from None
    if dtype not in DTYPES:
        raise ManifestError(f"{path}: unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if vocab < 1 or (eos is not None and not (isinstance(eos, int) and 0 <= eos < vocab)):
        raise ManifestError(f"{path}: vocabulary {vocab} and eos id {eos!r} do not fit together")
    for file, docs, _, _ in shards:
        if "/" in file or "/" in docs or file.startswith(".") or docs.startswith("."):
            raise ManifestError(f"{path}: shard names must be plain file names, got {file!r}, {docs!r}")
    return m

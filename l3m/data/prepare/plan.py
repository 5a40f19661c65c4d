"""What a prepare will do, decided before any tokenizing: the files, the job, the units of work.

A unit is the input of one shard: a byte range of one JSONL file (cut at line starts) or a run of
whole text files (each file one document). Units are a pure function of the files and
`shard_bytes`, never of the number of workers, so every run (resumed or not, 1 or 16 workers)
writes the same shards.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from l3m.data.prepare.format import FORMAT, VERSION, dtype_for
from l3m.data.sources.base import find_files
from l3m.data.tokenizers import Tokenizer, load_tokenizer, resolve_path

JSONL_SUFFIXES = (".jsonl", ".ndjson")
MIN_AUTO_SHARD, MAX_AUTO_SHARD = 1 << 20, 64 << 20


class PrepareError(Exception):
    """A problem with the input or the output directory, said in one line (`code`: the exit status)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # survives the trip back from a worker process
        return (PrepareError, (str(self), self.code))


@dataclass(frozen=True)
class Unit:
    """One shard's input: `(path, start, end)` byte ranges, all of one `kind` ("jsonl" or "text")."""

    kind: str
    parts: tuple[tuple[str, int, int], ...]

    @property
    def nbytes(self) -> int:
        return sum(end - start for _, start, end in self.parts)


def corpus_files(corpus: list[str], pattern: str = "**/*") -> list[Path]:
    """The files CORPUS names (files, folders searched with `pattern`, globs), in order, each once.

    Hidden files and folders (a name starting with '.') found inside folders are left out.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for item in corpus:
        try:
            files = find_files(item, pattern)
        except FileNotFoundError as e:
            raise PrepareError(f"corpus: {e}", 2) from None
        base = Path(item).expanduser()
        for f in files:
            rel = f.relative_to(base) if base.is_dir() else Path(f.name)
            if any(part.startswith(".") for part in rel.parts):
                continue
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(key)
    if not out:
        raise PrepareError(f"corpus: no files in {' '.join(corpus)}", 2)
    return out


def open_tokenizer(spec: str) -> Tokenizer:
    try:
        return load_tokenizer(spec, "stream")
    except (OSError, ValueError) as e:
        raise PrepareError(f"tokenizer: {e}", 2) from None


def tokenizer_record(spec: str, tok: Tokenizer) -> dict:
    """What identifies a tokenizer in the job: its name, kind, a hash of its file, vocab and EOS."""
    if spec == "bytes":
        digest = "bytes"
    else:
        h = hashlib.sha256()
        with open(resolve_path(spec), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"name": spec, "kind": tok.kind, "sha256": digest, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}


def auto_shard_bytes(total: int) -> int:
    """About 64 shards for corpora under 4 GiB (work for many processes), 64 MiB each above; at least 1 MiB."""
    return min(MAX_AUTO_SHARD, max(MIN_AUTO_SHARD, -(-total // 64)))


def make_job(spec: str, tok: Tokenizer, files: list[Path], text_key: str, shard_bytes: int = 0) -> dict:
    """Everything the output depends on; a re-run into the same directory must have the same job.

    `shard_bytes` 0 picks the input text per shard from the corpus size (`auto_shard_bytes`).
    """
    sources = []
    for f in files:
        st = f.stat()
        sources.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    shard_bytes = shard_bytes or auto_shard_bytes(sum(s["size"] for s in sources))
    return {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tokenizer_record(spec, tok),
        "dtype": dtype_for(tok.vocab_size),
        "text_key": text_key,
        "shard_bytes": shard_bytes,
        "sources": sources,
    }


def is_jsonl(path: str | Path) -> bool:
    return Path(path).suffix.lower() in JSONL_SUFFIXES


def line_cuts(path: str, size: int, step: int) -> list[int]:
    """Offsets near every `step` bytes of a file, each moved forward to the start of a line."""
    cuts = [0]
    with open(path, "rb") as f:
        pos = step
        while pos < size:
            f.seek(pos - 1)
            f.readline()  # ends right after the newline at or past pos - 1
            at = f.tell()
            if at >= size:
                break
            if at > cuts[-1]:
                cuts.append(at)
            pos = max(at, pos) + step
    cuts.append(size)
    return cuts


def make_units(job: dict) -> list[Unit]:
    """The job's units of work, in corpus order (see the module docstring)."""
    step = job["shard_bytes"]
    units: list[Unit] = []
    group: list[tuple[str, int, int]] = []
    total = 0

    def flush() -> None:
        nonlocal group, total
        if group:
            units.append(Unit("text", tuple(group)))
        group, total = [], 0

    for src in job["sources"]:
        path, size = src["path"], src["size"]
        if is_jsonl(path):
            flush()
            cuts = line_cuts(path, size, step)
            units += [Unit("jsonl", ((path, a, b),)) for a, b in zip(cuts, cuts[1:])]
            continue
        group.append((path, 0, size))
        total += size
        if total >= step:
            flush()
    flush()
    return units


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)

"""One unit of work: read its documents, tokenize them in batches, write one shard atomically.

Runs in a worker process (spawned: everything here is importable and its arguments picklable) or
inline. Memory stays at one batch of documents whatever the size of the unit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from l3m.data.prepare.format import DTYPES, shard_names
from l3m.data.prepare.plan import PrepareError, Unit, open_tokenizer

BATCH_BYTES = 1 << 20  # text per encode_batch call


def init_worker() -> None:
    """Worker processes tokenize one batch at a time on one thread: the processes are the parallelism."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("RAYON_NUM_THREADS", "1")


def _line_number(path: str, offset: int) -> int:
    """1-based line of byte `offset` (counted only when reporting an error)."""
    n, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 20, offset - done))
            if not block:
                break
            n += block.count(b"\n")
            done += len(block)
    return n


def iter_documents(unit: Unit, text_key: str) -> Iterator[str]:
    """The unit's documents as text, in order; empty documents are left out."""
    for path, start, end in unit.parts:
        if unit.kind == "text":
            data = Path(path).read_bytes()[start:end]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{path}: byte {start + e.start}: not UTF-8 text ({e.reason})") from None
            if text:
                yield text
            continue
        with open(path, "rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                line = f.readline()
                if not line:
                    break
                at, pos = pos, pos + len(line)
                if not line.strip():
                    continue
                text = _field(path, at, line, text_key)
                if text:
                    yield text


def _field(path: str, at: int, line: bytes, key: str) -> str:
    def fail(what: str) -> PrepareError:
        return PrepareError(f"{path}:{_line_number(path, at)}: (byte {at}) {what}")

    try:
        record = json.loads(line)
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise fail(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise fail(f"expected a JSON object with a string field {key!r}, got {type(record).__name__}")
    value = record.get(key)
    if not isinstance(value, str):
        got = "no such field" if key not in record else f"a {type(value).__name__}"
        raise fail(f"expected a string field {key!r} ({got}; choose the field with --text-key)")
    return value


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def write_shard(job: dict, index: int, unit: Unit, out_dir: str) -> dict:
    """Tokenize `unit` into shard `index` of `out_dir`; returns its counts.

    The tokens file is renamed into place before the document-ends file: a shard is finished
    exactly when its `.docs.npy` exists.
    """
    spec = job["tokenizer"]["name"]
    tok = open_tokenizer(spec)
    eos = tok.eos_id
    dtype = np.dtype(DTYPES[job["dtype"]])
    fast_bytes = tok.kind == "bytes" and tok.vocab_size == 256
    out = Path(out_dir)
    bin_name, docs_name = shard_names(index)
    ends: list[int] = []
    tokens = 0
    tmp = out / (bin_name + ".tmp")
    with open(tmp, "wb") as f:
        for batch in _batches(iter_documents(unit, job["text_key"])):
            if fast_bytes:
                ids = [np.frombuffer(d.encode("utf-8"), dtype=np.uint8) for d in batch]
            else:
                ids = [np.asarray(x, dtype=np.int64) for x in tok.encode_batch(batch)]
            parts = []
            for a in ids:
                parts.append(a)
                if eos is not None:
                    parts.append(np.asarray([eos], dtype=np.int64))
                tokens += len(a) + (eos is not None)
                ends.append(tokens)
            flat = np.concatenate(parts)
            if len(flat) and int(flat.max()) >= tok.vocab_size:
                raise PrepareError(f"tokenizer {spec!r} produced id {int(flat.max())} outside its vocabulary "
                                   f"of {tok.vocab_size}")
            f.write(flat.astype(dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / bin_name)
    tmp = out / (docs_name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(ends, dtype=np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / docs_name)
    return {"file": bin_name, "docs": docs_name, "tokens": tokens, "documents": len(ends)}


def finished_shard(out_dir: Path, index: int, dtype: str) -> dict | None:
    """The counts of shard `index` if an earlier run finished it (and it is intact), else None."""
    bin_name, docs_name = shard_names(index)
    docs, data = out_dir / docs_name, out_dir / bin_name
    if not docs.is_file() or not data.is_file():
        return None
    try:
        ends = np.load(docs, allow_pickle=False)
    except (OSError, ValueError):
        return None
    tokens = int(ends[-1]) if len(ends) else 0
    if ends.dtype != np.int64 or ends.ndim != 1 or data.stat().st_size != tokens * np.dtype(DTYPES[dtype]).itemsize:
        return None
    return {"file": bin_name, "docs": docs_name, "tokens": tokens, "documents": len(ends)}

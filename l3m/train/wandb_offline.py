"""Which steps an earlier process of a run left in wandb's offline files (`run-<id>.wandb`).

An offline wandb run keeps its history in memory and writes it out in 32 KiB blocks, so a
process killed with SIGKILL may leave none or part of what l3m sent it; a resumed run reads the
files back to send again exactly what is missing (`WandbSink.resume`).

The file is wandb's append-only record log: a 7-byte header (`:W&B`, a magic number, a version)
then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32, length, type: full, first,
middle, last); a record is a `wandb_internal_pb2.Record` protobuf. Anything unexpected makes
`held_steps` return None (unknown), never raise: the caller then assumes the worst case.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
MAX_BYTES = 1 << 30  # a run's offline history is far smaller; a larger file is not read


def _chunks(data: bytes) -> Iterator[bytes]:
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the tail of a block is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + _HEADER + length > len(data):
            return  # a chunk cut short by the kill
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"unknown chunk type {kind}")


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            raise ValueError(f"{path} is not a regular file of a plausible size")
        return f.read(MAX_BYTES + 1)


def file_steps(path: Path) -> set[tuple[int, str]]:
    """(step, split) of every history row in one offline run file, the split being the prefix of
    its keys (`train/loss` -> `train`): a step's training and evaluation records are told apart."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = _read(path)
    if len(data) < _HEADER or data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    steps: set[tuple[int, str]] = set()
    for raw in _chunks(data):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            step = int(rec.history.step.num)
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                if "/" in key and not key.startswith("_"):
                    steps.add((step, key.split("/", 1)[0]))
    return steps


def held_steps(wandb_dir: Path, run_id: str) -> set[tuple[int, str]] | None:
    """Every (step, split) the offline files of wandb run `run_id` under `wandb_dir` hold; None
    when a file cannot be read as one."""
    held: set[tuple[int, str]] = set()
    try:
        for path in sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
            held |= file_steps(path)
    except Exception:  # noqa: BLE001 - another wandb version, a damaged file: unknown, not fatal
        return None
    return held

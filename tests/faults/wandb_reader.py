"""Read the history back from wandb's offline run files (`run-<id>.wandb`), to check what l3m sent.

The file is wandb's append-only record log: a 7-byte header (`:W&B`, magic, version), then
32 KiB blocks of chunks, each with a 7-byte header (CRC-32, length, type: full, first, middle,
last); a record is one `wandb_internal_pb2.Record` protobuf, split over chunks when long.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B", f"{path} is not a wandb run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def history(path: Path) -> list[dict]:
    """Each history row of one offline run file: {key: value}, with `_step`."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in rec.history.item})
    return rows


def offline_runs(root: Path, run_id: str) -> list[Path]:
    """The run files of every process that logged to wandb run `run_id` under `root`, oldest first."""
    return sorted(root.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))

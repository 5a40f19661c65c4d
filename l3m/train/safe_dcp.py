"""Reading DCP checkpoints without running code from them.

torch's `FileSystemReader.read_metadata` unpickles `.metadata` with plain `pickle`, so a crafted
checkpoint could run code the moment it is opened. Here `.metadata` goes through a restricted
unpickler that can build only DCP's metadata records and the few torch values in them (sizes,
dtypes, layouts); anything else is refused before it is created. The decoded metadata is then
checked: only tensor entries (DCP would torch-load a non-tensor "bytes" entry without `weights_only`;
such entries are refused), payload files named plainly inside the checkpoint, no stream transforms. The tensors
themselves are read by DCP with `torch.load(weights_only=True)`.

`check_tree` is the part of a checkpoint's verification that needs no payload: the manifest
names plain relative paths and the directory holds exactly those files, none a symlink.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_md
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo

METADATA_FILE = ".metadata"


class UnsafeCheckpoint(ValueError):
    """A checkpoint that is not what l3m writes: a refused pickle, a stray file, a symlink, a path
    leaving its directory. Never skipped silently: it means someone made or changed it by hand."""


# Records DCP writes; BUILD may fill in only these (never a class, function or torch singleton).
_RECORDS: dict[tuple[str, str], type] = {
    ("torch.distributed.checkpoint.metadata", c.__name__): c
    for c in (dcp_md.Metadata, dcp_md.TensorStorageMetadata, dcp_md.TensorProperties,
              dcp_md.ChunkStorageMetadata, dcp_md.MetadataIndex, dcp_md.StorageMeta)
}
_RECORDS[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = _StorageInfo
_OTHERS: dict[tuple[str, str], Any] = {
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"): dcp_md._MEM_FORMAT_ENCODING,
    ("torch", "Size"): torch.Size,
    ("pathlib", "PosixPath"): PurePosixPath,  # storage_meta.checkpoint_id: kept as a pure path
    ("pathlib", "PurePosixPath"): PurePosixPath,
}
_LAYOUTS = {str(v): v for v in vars(torch).values() if isinstance(v, torch.layout)}


def _layout(name: str) -> torch.layout:
    """Stands in for `torch.serialization._get_layout`: a layout by name, nothing else."""
    if not isinstance(name, str) or name not in _LAYOUTS:
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r}")
    return _LAYOUTS[name]


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation, so BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _RECORDS:
            return _RECORDS[key]
        if key in _OTHERS:
            return _OTHERS[key]
        if key == ("torch.serialization", "_get_layout"):
            return _layout
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent reference")

    def _load_build(self) -> None:
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if type(inst) not in _RECORDS.values():
            raise pickle.UnpicklingError(f"refused to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def _refuse_buffers(self) -> None:
        # BYTEARRAY8 allocates (and zero-fills) its declared length before reading it: 20 bytes
        # could ask for all of memory. DCP metadata holds no byte arrays or out-of-band buffers.
        raise pickle.UnpicklingError("refused a byte array or buffer")

    for _op in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = _refuse_buffers
    del _op


def refusal_reason(error: BaseException) -> str:
    """The informative line of a `torch.load(weights_only=True)` refusal (torch's own text around
    it suggests retrying with `weights_only=False`, which l3m never does)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "unsupported" in line.lower()]
    return (useful or lines[-1:] or [type(error).__name__])[0].removeprefix("WeightsUnpickler error: ")


def _safe_name(name: Any) -> bool:
    """A plain relative POSIX path: no root, no `..`, no `.`, no backslashes or NULs."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and p.as_posix() == name and all(part not in ("", ".", "..") for part in p.parts)


def _check(metadata: Any, directory: Path) -> dcp_md.Metadata:
    """`metadata` if it describes only tensors stored in plain files of `directory`."""
    if type(metadata) is not dcp_md.Metadata:
        raise UnsafeCheckpoint(f"{METADATA_FILE} holds a {type(metadata).__name__}, not DCP metadata")
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise UnsafeCheckpoint(f"{METADATA_FILE} has no table of tensors")
    for key, md in entries.items():
        if not isinstance(key, str) or type(md) is not dcp_md.TensorStorageMetadata:
            raise UnsafeCheckpoint(f"{METADATA_FILE} entry {key!r} is not a tensor "
                                   "(l3m checkpoints hold only tensors there)")
        if (not _is_size(md.size) or type(md.properties) is not dcp_md.TensorProperties
                or type(md.properties.dtype) is not torch.dtype):
            raise UnsafeCheckpoint(f"{METADATA_FILE} entry {key!r} has no valid size and dtype")
        if not isinstance(md.chunks, list) or not all(
                type(c) is dcp_md.ChunkStorageMetadata and _is_size(c.offsets) and _is_size(c.sizes)
                and len(c.offsets) == len(c.sizes) == len(md.size) for c in md.chunks):
            raise UnsafeCheckpoint(f"{METADATA_FILE} entry {key!r} has malformed chunks")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise UnsafeCheckpoint(f"{METADATA_FILE} has no storage table")
    sizes: dict[str, int] = {}  # payload files already checked (one stat per file, not per chunk)
    ranges: dict[str, list[tuple[int, int]]] = {}
    stored: dict[str, int] = {}  # bytes of payload per tensor
    for index, info in storage.items():
        if type(index) is not dcp_md.MetadataIndex or not isinstance(index.fqn, str):
            raise UnsafeCheckpoint(f"{METADATA_FILE} has a storage key of type {type(index).__name__}")
        if type(info) is not _StorageInfo:
            raise UnsafeCheckpoint(f"{METADATA_FILE} has a storage entry of type {type(info).__name__}")
        if not _safe_name(info.relative_path):
            raise UnsafeCheckpoint(f"{METADATA_FILE} points outside the checkpoint: {info.relative_path!r}")
        if info.relative_path not in sizes:
            f = directory / info.relative_path
            if f.is_symlink() or not f.is_file():
                raise UnsafeCheckpoint(f"{METADATA_FILE} names {info.relative_path!r}, which is not a plain file here")
            sizes[info.relative_path] = f.stat().st_size
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (info.offset, info.length)) \
                or info.offset + info.length > sizes[info.relative_path]:
            raise UnsafeCheckpoint(f"{METADATA_FILE} has a bad offset or length for {info.relative_path!r}")
        if info.transform_descriptors:
            raise UnsafeCheckpoint(f"{METADATA_FILE} asks for stream transforms {info.transform_descriptors!r}")
        ranges.setdefault(info.relative_path, []).append((info.offset, info.offset + info.length))
        stored[index.fqn] = stored.get(index.fqn, 0) + info.length
    for name, spans in ranges.items():  # DCP writes each item once: ranges never overlap
        spans.sort()
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)):
            raise UnsafeCheckpoint(f"{METADATA_FILE} reads overlapping parts of {name!r}")
    for key, md in entries.items():  # so what is allocated for the tensors is at most the payload's size
        if math.prod(md.size) * md.properties.dtype.itemsize > stored.get(key, 0):
            raise UnsafeCheckpoint(f"{METADATA_FILE} entry {key!r} claims {tuple(md.size)} "
                                   f"{md.properties.dtype}, more than its stored bytes")
    return metadata


def _is_size(size: Any) -> bool:
    return isinstance(size, torch.Size) and all(d >= 0 for d in size)


def read_metadata(directory: str | Path, filename: str = METADATA_FILE) -> dcp_md.Metadata:
    """The checked DCP metadata of `directory`; `UnsafeCheckpoint` if it is anything else."""
    directory = Path(directory)
    path = directory / filename
    if path.is_symlink():
        raise UnsafeCheckpoint(f"{filename} is a symlink")
    data = path.read_bytes()
    try:
        metadata = _RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError) as e:
        raise UnsafeCheckpoint(f"{filename} was not loaded: {e}") from None
    except Exception as e:  # noqa: BLE001 - a malformed pickle fails in many ways; none is a bug of ours
        raise UnsafeCheckpoint(f"{filename} was not loaded: {type(e).__name__}: {e}") from None
    return _check(metadata, directory)


class SafeFileSystemReader(FileSystemReader):  # safe: read_metadata uses the restricted unpickler
    """DCP's file reader with `read_metadata` replaced by the restricted one above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_md.Metadata:
        rank = kwargs.get("rank")
        name = os.path.basename(os.fspath(self._get_metadata_path(rank)))
        metadata = read_metadata(Path(os.fspath(self.path)), name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_md.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def _slice_file(self, file: Any, sinfo: _StorageInfo) -> Any:
        """Each payload must be a zip of stored (uncompressed) records, as `torch.save` writes: a
        deflated record lets a few kilobytes make `torch.load` allocate and fill gigabytes."""
        where = f"{sinfo.relative_path} at byte {sinfo.offset}"
        try:
            with zipfile.ZipFile(_Window(file, sinfo.offset, sinfo.length)) as z:
                records = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise UnsafeCheckpoint(f"{where} is not a tensor file ({e})") from None
        check_stored(records, sinfo.length, where)
        return super()._slice_file(file, sinfo)


def check_stored(records: list[zipfile.ZipInfo], length: int, where: str) -> None:
    """`UnsafeCheckpoint` unless every record of a torch zip file is stored as is (torch.save never
    compresses; torch.load would inflate a deflated record, ~1000x its size, into memory)."""
    bad = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED or r.file_size > length]
    if bad:
        raise UnsafeCheckpoint(f"{where} has a compressed or oversized record {bad[0]!r} (torch.save writes neither)")


class _Window(io.RawIOBase):
    """Bytes `offset .. offset + length` of `file` as a seekable file (DCP's own view gets
    `seek(n, SEEK_END)` wrong, which `zipfile` needs)."""

    def __init__(self, file: Any, offset: int, length: int) -> None:
        super().__init__()
        self.file, self.start, self.length, self.pos = file, offset, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.length - self.pos))
        self.file.seek(self.start + self.pos)
        got = self.file.readinto(memoryview(b)[:n])
        self.pos += got or 0
        return got or 0


class TensorsOnlyPlanner(DefaultLoadPlanner):
    """The default planner, refusing the non-tensor entries it would `torch.load` unrestricted."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise UnsafeCheckpoint(f"refused to unpickle the non-tensor entry {read_item.dest_index.fqn!r}")


def check_tree(directory: Path, files: Mapping[str, Any], marker: str) -> None:
    """The manifest's `files` are plain relative names, and `directory` holds exactly those (and
    the `marker`), with no symlink anywhere. Raises `UnsafeCheckpoint`."""
    if not isinstance(files, Mapping):
        raise UnsafeCheckpoint(f"the {marker} manifest lists no files")
    for name in files:
        if not _safe_name(name) or name == marker:
            raise UnsafeCheckpoint(f"the {marker} manifest names a path outside the checkpoint: {name!r}")
    present: set[str] = set()
    for root, dirs, names in os.walk(directory):
        for n in dirs + names:
            p = Path(root) / n
            rel = p.relative_to(directory).as_posix()
            if p.is_symlink():
                raise UnsafeCheckpoint(f"{rel} is a symlink (a checkpoint holds only its own files)")
            if n in names:
                present.add(rel)
    extra = sorted(present - set(files) - {marker})
    if extra:
        raise UnsafeCheckpoint(f"{extra[0]} is not in the {marker} manifest"
                               + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))

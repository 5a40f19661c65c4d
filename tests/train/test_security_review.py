"""Second-look attacks on checkpoint loading: metadata that unpickles fine (only allowed records)
but lies about shapes, types or byte ranges must be refused as `UnsafeCheckpoint`, never reach
`torch.empty` with an attacker's size or crash with a stray AttributeError / TypeError."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from l3m.train.checkpoint import load_model_tensors, resolve_checkpoint, write_manifest
from l3m.train.safe_dcp import UnsafeCheckpoint, read_metadata


@pytest.fixture
def step(tmp_path) -> Path:
    """A minimal, valid checkpoint directory written by DCP itself (no training run)."""
    d = tmp_path / "step_000001"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model/w": torch.arange(6, dtype=torch.float32), "model/b": torch.ones(2, 3)},
                 checkpoint_id=str(d), no_dist=True)
    (d / "state.json").write_text(json.dumps({"format": "l3m-checkpoint/1", "step": 1, "state": {}}))
    write_manifest(d, 1)
    return d


def _tamper(step: Path, edit: Callable) -> None:
    meta = read_metadata(step)
    edit(meta)
    (step / ".metadata").write_bytes(pickle.dumps(meta))
    write_manifest(step, 1)  # resealed, as an attacker would


def _w(meta):
    return meta.state_dict_metadata["model/w"]


def _first_storage(meta):
    return next(iter(meta.storage_data.values()))


def _set(obj_of: Callable, attr: str, value) -> Callable:
    return lambda meta: setattr(obj_of(meta), attr, value)


TAMPERINGS = {
    # a 4 TiB tensor claimed by a few bytes of payload (memory bomb through torch.empty)
    "huge_size": _set(_w, "size", torch.Size([2 ** 40])),
    # a size whose product overflows int64 (torch.Size.numel would wrap)
    "overflowing_size": _set(_w, "size", torch.Size([2 ** 62, 2 ** 62, 4])),
    "negative_size": _set(_w, "size", torch.Size([-5])),
    "properties_not_a_record": _set(_w, "properties", 5),
    "chunks_not_a_list": _set(_w, "chunks", 7),
    "unhashable_path": _set(_first_storage, "relative_path", ["a"]),
    "length_past_the_file": _set(_first_storage, "length", 2 ** 40),
    "storage_key_not_an_index": lambda meta: meta.storage_data.update({"k": _first_storage(meta)}),
    # every tensor points at the same bytes: the claimed sizes then add up past the payload
    "overlapping_ranges": lambda meta: [setattr(i, "offset", 0) for i in meta.storage_data.values()],
}


@pytest.mark.parametrize("kind", list(TAMPERINGS))
def test_lying_metadata_is_refused_cleanly(step, kind):
    _tamper(step, TAMPERINGS[kind])
    with pytest.raises(UnsafeCheckpoint):
        resolve_checkpoint(step)
    with pytest.raises(UnsafeCheckpoint):
        load_model_tensors(step)


def test_the_untampered_checkpoint_loads(step):
    assert resolve_checkpoint(step) == step
    tensors = load_model_tensors(step)
    assert torch.equal(tensors["w"], torch.arange(6, dtype=torch.float32))
    assert torch.equal(tensors["b"], torch.ones(2, 3))


def test_a_dataset_folder_with_a_script_is_never_run(tmp_path, monkeypatch):
    """`datasets` < 3 (allowed by the `hf` extra) runs `<folder>/<folder>.py` when given a folder;
    l3m refuses such a folder itself, whatever `datasets` version is installed."""
    import types

    from l3m.data.sources import hf

    folder = tmp_path / "shared"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    (folder / "shared.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "train.jsonl").write_text('{"label": 1}\n')

    def old_load_dataset(path, **kwargs):  # what datasets 2.x does with a folder holding a script
        script = Path(path) / f"{Path(path).name}.py"
        if script.is_file():
            exec(compile(script.read_text(), str(script), "exec"), {})
        return None

    fake = types.SimpleNamespace(load_dataset=old_load_dataset, load_from_disk=None, DatasetDict=dict)
    monkeypatch.setattr(hf, "_datasets", lambda: fake)
    with pytest.raises(ValueError, match="dataset script"):
        hf.load_local(str(folder), "train")
    assert not marker.exists()


def test_a_deflated_tensor_record_is_refused(step):
    """torch.load inflates deflated zip records: ~1000x more memory than the file holds (a zip
    bomb passing every size check of the metadata). torch.save never compresses, so l3m refuses."""
    import io
    import zipfile

    meta = read_metadata(step)
    data = bytearray()
    for info in sorted(meta.storage_data.values(), key=lambda i: i.offset):
        raw = (step / info.relative_path).read_bytes()[info.offset:info.offset + info.length]
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
            for rec in zin.infolist():
                zout.writestr(rec.filename, zin.read(rec.filename))
        blob = out.getvalue()
        torch.load(io.BytesIO(blob), weights_only=True)  # torch itself accepts the deflated record
        info.relative_path, info.offset, info.length = "__0_0.distcp", len(data), len(blob)
        data += blob
    for f in step.glob("*.distcp"):
        f.unlink()
    (step / "__0_0.distcp").write_bytes(bytes(data))
    (step / ".metadata").write_bytes(pickle.dumps(meta))
    write_manifest(step, 1)
    assert resolve_checkpoint(step) == step  # nothing in the metadata gives it away
    with pytest.raises(UnsafeCheckpoint, match="compressed"):
        load_model_tensors(step)


def test_a_deflated_torch_weights_file_is_refused(tmp_path):
    """The same zip bomb through `train.init_from` / `l3m import` with a torch file."""
    import zipfile

    from l3m.train.export import read_weights

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(64)}, plain)
    assert torch.equal(read_weights(plain)["w"], torch.zeros(64))  # what torch.save writes still loads
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for rec in zin.infolist():
            zout.writestr(rec.filename, zin.read(rec.filename))
    assert torch.load(bomb, weights_only=True)["w"].shape == (64,)  # torch itself inflates it
    with pytest.raises(ValueError, match="compressed"):
        read_weights(bomb)


def test_an_eps_file_posing_as_a_jpeg_never_reaches_ghostscript(tmp_path, monkeypatch):
    """PIL picks the decoder by content; for EPS it runs Ghostscript (`gs`), an interpreter with a
    history of -dSAFER escapes. A fake `gs` on PATH records whether it was ever started."""
    import os

    from PIL import EpsImagePlugin, UnidentifiedImageError

    from l3m.data.transforms import load_rgb

    marker, fake = tmp_path / "GS_RAN", tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # look for gs again, on this PATH
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n")
    with pytest.raises(UnidentifiedImageError):
        load_rgb(str(image))
    assert not marker.exists()


def test_a_bytearray_that_claims_all_memory_is_refused_before_allocation(step):
    """Pickle's BYTEARRAY8 allocates and zero-fills its declared length before reading: a 20-byte
    `.metadata` could demand gigabytes. 2**62 keeps this test from allocating anything either way."""
    import struct

    (step / ".metadata").write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 1 << 62) + b".")
    write_manifest(step, 1)
    with pytest.raises(UnsafeCheckpoint, match="refused a byte array"):
        read_metadata(step)

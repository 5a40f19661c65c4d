"""A checkpoint never runs code: crafted `.metadata` and payloads are refused on every loading path.

A "resealed" checkpoint has its COMPLETE manifest recomputed after the tampering, as an attacker
would do; the refusal must then come from the content checks, not from the checksums.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from train_utils import LLM, corpus_text

from l3m.cli import main as cli
from l3m.train.api import train_main
from l3m.train.checkpoint import MARKER, load_model_tensors, resolve_checkpoint, verify, write_manifest
from l3m.train.safe_dcp import UnsafeCheckpoint, read_metadata

pytestmark = pytest.mark.usefixtures("run_env")


class _Touch:
    """Unpickling this runs a shell command that creates `path`: the proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class _Open:
    """The same without a shell: `open(path, "w")`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    """(program, run directory) of a 2-step run with one checkpoint; copied, never changed."""
    root = tmp_path_factory.mktemp("pristine")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text())
    program = root / "llm.l3m"
    program.write_text(LLM.format(corpus=corpus).replace("steps = 10", "steps = 2"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("L3M_PEAK_FLOPS", "1e11")
        mp.setenv("L3M_DEVICE", "cpu")
        mp.chdir(root)
        assert train_main(str(program), [], output=str(root / "run")) == 0
    return program, root / "run"


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(pristine[1], out)
    return out


def _step(run: Path) -> Path:
    return run / "ckpt" / "step_000002"


def _reseal(step: Path) -> None:
    write_manifest(step, 2)


def _evil_metadata(step: Path, payload: object, reseal: bool = True) -> None:
    """The real metadata with `payload` hidden inside, pickled with plain pickle as DCP would."""
    meta = read_metadata(step)
    meta.planner_data = {"x": payload}
    (step / ".metadata").write_bytes(pickle.dumps(meta))
    if reseal:
        _reseal(step)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error"), err
    return lines[0]


def _paths(program: Path, run: Path, tmp: Path) -> dict[str, list[str]]:
    """Every CLI path that opens a checkpoint, as `l3m` arguments."""
    return {
        "export": ["export", str(run), str(tmp / "out.safetensors")],
        "export-step": ["export", str(_step(run)), str(tmp / "out.safetensors")],
        "eval": ["eval", str(program), "--checkpoint", str(run)],
        "init_from": ["train", str(program), "--output", str(tmp / "fresh"), f"train.init_from={run}"],
        "auto-resume": ["train", str(program), "--output", str(run), "train.steps=3"],
        "resume": ["train", str(program), "--output", str(run), "--resume", "train.steps=3"],
    }


@pytest.mark.parametrize("path", ["export", "export-step", "eval", "init_from", "auto-resume", "resume"])
def test_malicious_metadata_is_refused_on_every_path(pristine, run, tmp_path, capsys, path):
    marker = tmp_path / "PWNED"
    _evil_metadata(_step(run), _Touch(marker))
    with pytest.raises(UnsafeCheckpoint, match="refused to load posix.system"):
        verify(_step(run))
    capsys.readouterr()
    assert cli(_paths(pristine[0], run, tmp_path)[path]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "refused to load posix.system" in line and "step_000002" in line
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_shell_free_payload_and_stale_manifest(pristine, run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    _evil_metadata(_step(run), _Open(marker), reseal=False)  # the checksums no longer match
    problem = verify(_step(run))  # damage, as far as the checksums tell: reported, not raised
    assert problem and ".metadata" in problem
    assert cli(["export", str(_step(run)), str(tmp_path / "o.safetensors")]) == 1
    assert problem in _one_error_line(capsys.readouterr().err)
    _reseal(_step(run))
    assert cli(["export", str(_step(run)), str(tmp_path / "o.safetensors")]) == 1
    assert "refused to load" in _one_error_line(capsys.readouterr().err)
    # Auto-resume skips a damaged checkpoint (bit rot) but stops at a refused one: no fresh start.
    assert cli(["train", str(pristine[0]), "--output", str(run), "train.steps=3"]) == 1
    assert not marker.exists()


def test_flipped_payload_byte_is_a_clear_error(run, tmp_path, capsys):
    data = next(_step(run).glob("*.distcp"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    data.write_bytes(bytes(raw))
    assert cli(["export", str(_step(run)), str(tmp_path / "o.safetensors")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "does not match its checksum" in line and data.name in line


def test_malicious_tensor_payload_is_refused(run, tmp_path, capsys):
    """DCP reads tensors with torch.load(weights_only=True); a pickled object there is refused."""
    marker, step = tmp_path / "PWNED", _step(run)
    meta = read_metadata(step)
    # One copy per storage entry, padded to the largest tensor, so that the metadata's own checks
    # (no overlapping ranges, enough bytes for each tensor) pass and torch.load must refuse it.
    need = max(math.prod(md.size) * md.properties.dtype.itemsize for md in meta.state_dict_metadata.values())
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Touch(marker), "pad": b"\0" * need}, evil)
    blob = evil.read_bytes()
    infos = list(meta.storage_data.values())
    for f in step.glob("*.distcp"):
        f.unlink()
    (step / "__0_0.distcp").write_bytes(blob * len(infos))
    for i, info in enumerate(infos):
        info.relative_path, info.offset, info.length = "__0_0.distcp", i * len(blob), len(blob)
    (step / ".metadata").write_bytes(pickle.dumps(meta))
    _reseal(step)
    assert verify(step) is None  # nothing in the manifest or metadata gives it away
    assert cli(["export", str(run), str(tmp_path / "o.safetensors")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "tensor file was refused" in line and "posix.system" in line
    assert not marker.exists()


def _traversal(step: Path) -> None:
    meta = read_metadata(step)
    next(iter(meta.storage_data.values())).relative_path = "../../../etc/passwd"
    (step / ".metadata").write_bytes(pickle.dumps(meta))


def _bytes_entry(step: Path) -> None:
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    meta = read_metadata(step)
    meta.state_dict_metadata["model/extra"] = BytesStorageMetadata()
    (step / ".metadata").write_bytes(pickle.dumps(meta))


def _symlinked_file(step: Path) -> None:
    target = step.parent.parent / "elsewhere.json"
    target.write_text("{}")
    (step / "rank_0.json").unlink()
    (step / "rank_0.json").symlink_to(target)


def _class_state(step: Path) -> None:
    # BUILD on the Metadata *class* (setattr on it), not on a Metadata record.
    (step / ".metadata").write_bytes(
        b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\nN}X\x07\x00\x00\x00versionX\x01\x00\x00\x00xs\x86b.")


TAMPERINGS = {
    "extra file": (lambda s: (s / "notes.txt").write_text("hi"), "notes.txt is not in the COMPLETE manifest"),
    "symlinked file": (_symlinked_file, "rank_0.json is a symlink"),
    "path traversal": (_traversal, "points outside the checkpoint"),
    "bytes entry": (_bytes_entry, "refused to load torch.distributed.checkpoint.metadata.BytesStorageMetadata"),
    "class state": (_class_state, "refused to set the state of a type"),
    "manifest escape": (None, "names a path outside the checkpoint"),
}


@pytest.mark.parametrize("kind", list(TAMPERINGS))
def test_tampered_structure_is_refused(run, tmp_path, capsys, kind):
    from torch.distributed.checkpoint.metadata import Metadata

    step = _step(run)
    tamper, message = TAMPERINGS[kind]
    if tamper is None:  # a manifest that lists a file outside the directory
        import json

        manifest = json.loads((step / MARKER).read_text())
        manifest["files"]["../escape.json"] = {"size": 2, "sha256": "0" * 64}
        (step / MARKER).write_text(json.dumps(manifest))
    else:
        tamper(step)
        if kind != "extra file":
            _reseal(step)
    with pytest.raises(UnsafeCheckpoint, match=message):
        verify(step)
    assert cli(["export", str(run), str(tmp_path / "o.safetensors")]) == 1
    assert message in _one_error_line(capsys.readouterr().err)
    assert getattr(Metadata, "version", None) != "x"


def test_a_good_checkpoint_still_loads(pristine, run, tmp_path, capsys):
    assert verify(_step(run)) is None and resolve_checkpoint(run) == _step(run)
    assert cli(["export", str(run), str(tmp_path / "o.safetensors")]) == 0
    assert cli(["eval", str(pristine[0]), "--checkpoint", str(run)]) == 0
    assert cli(["train", str(pristine[0]), "--output", str(run), "--resume", "train.steps=3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    weights = load_model_tensors(_step(run))
    assert weights and all(not k.startswith("model/") for k in weights)


_SPLICES = [b"cos\nsystem\n(S'touch {m}'\ntR.", b"cbuiltins\nexec\n(S'open(\"{m}\", \"w\")'\ntR.",
            b"\x80\x04\x95", b"(", b"R", b"b", b"\x93", b"."]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from([".metadata", "state.json", "rank_0.json", "distcp"]),
       seed=st.integers(0, 2**31), edits=st.integers(1, 6), reseal=st.booleans())
def test_fuzzed_checkpoints_fail_cleanly(pristine, tmp_path_factory, target, seed, edits, reseal):
    """Random byte edits and spliced pickle opcodes: either the checkpoint loads, or it is refused
    with a ValueError/KeyError (exit 1 on the CLI); nothing runs and nothing else is raised."""
    import random

    rng = random.Random(seed)
    work = tmp_path_factory.mktemp("fuzz")
    marker = work / "PWNED"
    run = work / "run"
    shutil.copytree(pristine[1], run)
    step = _step(run)
    f = next(step.glob("*.distcp")) if target == "distcp" else step / target
    raw = bytearray(f.read_bytes())
    for _ in range(edits):
        i = rng.randrange(len(raw) + 1)
        op = rng.randrange(4)
        if op == 0:
            splice = rng.choice(_SPLICES).replace(b"{m}", str(marker).encode())
            raw[i:i] = splice
        elif op == 1 and raw:
            raw[min(i, len(raw) - 1)] = rng.randrange(256)
        elif op == 2:
            del raw[i:i + rng.randrange(1, 16)]
        else:
            raw[i:] = b""
    f.write_bytes(bytes(raw))
    if reseal:
        _reseal(step)
    with contextlib.suppress(ValueError, KeyError):
        load_model_tensors(resolve_checkpoint(step))
    assert not marker.exists()


def test_pickled_code_in_a_torch_weights_file_is_refused(pristine, tmp_path, capsys):
    """`train.init_from` / `l3m eval --checkpoint` with a torch file: weights_only=True, a clear error."""
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save({"w": _Touch(marker)}, evil)
    assert cli(["eval", str(pristine[0]), "--checkpoint", str(evil)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "was refused" in line and "posix.system" in line
    assert not marker.exists()

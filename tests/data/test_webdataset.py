"""WebDataset: tar shards in the webdataset layout, indexed by member offsets and read by seeking."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from l3m.data.errors import DataError
from l3m.data.loader import build_loader
from l3m.data.sources import WebDataset
from l3m.data.tokens import decode_caption

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def _png(colour, size=(10, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def samples(start: int, count: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + count):
        key = f"{i:06d}"
        out += [(f"{key}.png", _png(COLOURS[i % 6])), (f"{key}.txt", f"colour {i % 6}".encode()),
                (f"{key}.cls", str(i % 6).encode()), (f"{key}.json", json.dumps({"y": i % 3}).encode())]
    return out


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    write_shard(root / "a-000.tar", samples(0, 5))
    write_shard(root / "a-001.tar", samples(5, 7))
    return root


def _src(root, **kw):
    args = dict(image_size=4, normalize=False, batch_size=4, text_ext="txt", label_ext="cls", seq_len=16)
    return WebDataset(str(root / "*.tar") if root.is_dir() else str(root), **{**args, **kw})


def test_samples_group_members_by_key_across_shards(shards):
    src = _src(shards)
    assert len(src) == 12
    assert src.spec() == {"image": ((3, 4, 4), torch.float32), "text": ((16,), torch.long), "label": ((), torch.long)}
    for i in (0, 4, 5, 11):
        s = src[i]
        r, g, b = (c / 255 for c in COLOURS[i % 6])
        assert torch.allclose(s["image"][:, 0, 0], torch.tensor([r, g, b]))
        assert decode_caption(s["text"]) == f"colour {i % 6}" and s["label"] == i % 6
    as_json = _src(shards, text_ext="", label_ext="json", label_field="y")
    assert set(as_json.spec()) == {"image", "label"} and as_json[7]["label"] == 7 % 3
    assert str(src.index.where.dtype) == "int64"  # 8 bytes per offset and per size


def test_resume_with_workers_reads_the_same_batches(shards):
    src = _src(shards, batch_size=2, augment="crop_flip")
    full = build_loader(src, seed=5, num_workers=2)
    want = [next(full) for _ in range(9)]
    part = build_loader(src, seed=5, num_workers=2)
    for _ in range(4):
        next(part)
    again = build_loader(src, seed=5, num_workers=2)
    again.load_state_dict(part.state_dict())
    for w in want[4:]:
        got = next(again)
        assert torch.equal(got["image"], w["image"]) and torch.equal(got["label"], w["label"])
    for loader in (full, part, again):
        loader.close()


def test_a_truncated_member_names_shard_and_offset(shards, tmp_path):
    data = (shards / "a-001.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    src = _src(shards)
    last_offset = int(src.index.where[-1, 0])  # the last sample's image
    cut.write_bytes(data[: last_offset + 20])
    short = _src(cut)
    assert len(short) == 7  # the headers are there; the member's bytes are not
    with pytest.raises(DataError, match=rf"cut.tar@{last_offset}: member truncated"):
        short[6]


def test_a_corrupt_header_or_image_is_a_data_error(shards, tmp_path):
    data = bytearray((shards / "a-000.tar").read_bytes())
    bad = tmp_path / "bad.tar"
    src = _src(shards)
    second_header = int(src.index.where[1, 0]) - 512  # the second sample's first member
    data[second_header : second_header + 100] = b"\x07" * 100
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"bad.tar@{second_header}: corrupt tar header"):
        len(_src(bad))
    (tmp_path / "junk.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DataError, match="junk.tar: not an uncompressed tar shard"):
        len(_src(tmp_path / "junk.tar"))
    broken = tmp_path / "img.tar"
    write_shard(broken, [("000000.png", b"\x89PNG\r\n\x1a\n garbage"), ("000000.txt", b"x"), ("000000.cls", b"1")])
    with pytest.raises(DataError, match=r"img.tar@512: cannot decode image"):
        _src(broken)[0]
    nolabel = tmp_path / "nolabel.tar"
    write_shard(nolabel, [("000000.png", _png(COLOURS[0])), ("000000.txt", b"x")])
    with pytest.raises(DataError, match="nolabel.tar: sample 0 has no .cls member"):
        _src(nolabel)[0]


def test_skip_drops_what_the_index_cannot_read_and_the_loader_counts_it(shards, tmp_path):
    from l3m.data.errors import scan_policy

    data = bytearray((shards / "a-001.tar").read_bytes())
    src = _src(shards)
    fourth = int(src.index.where[5 + 3, 0]) - 512  # the header of the 4th sample of the second shard
    data[fourth : fourth + 100] = b"\x07" * 100
    (shards / "a-001.tar").write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt tar header"):
        len(_src(shards))
    with scan_policy("skip"):
        kept = _src(shards)
        assert len(kept) == 5 + 2  # the 3rd sample of the shard is the one the bad header interrupts
    assert len(kept.scan_errors) == 1 and "a-001.tar@" in kept.scan_errors[0]
    assert kept[6]["label"] == (5 + 1) % 6
    loader = build_loader(kept, shuffle=False, on_error="skip", max_error_fraction=1.0)
    next(loader)
    assert loader.data_errors == 1
    next(loader)
    assert loader.data_errors == 1  # counted once


def test_lint_names_a_port_the_extensions_switch_off(compile_text):
    """The ports are optional and ordered image, text, label: a positional `-> image, label` with
    no text_ext binds `label` to the text port. Lint says so (it used to fail only in `train`)."""
    head = 'l3m 1\ndata {\n  train: WebDataset(root = "s/*.tar", label_ext = "cls", image_size = 8) -> '
    tail = "\n}\n"
    bad = compile_text(head + "image, label" + tail)
    errs = [d for d in bad.diagnostics if d.is_error]
    assert [d.code for d in errs] == ["E830"] and "binds key 'label' to its 'text' port" in errs[0].message
    assert "(image = image, label = label)" in errs[0].help and errs[0].span.line == 3
    off = compile_text(head + "image, y" + tail)  # a key of another name on a port switched off
    errs = [d for d in off.diagnostics if d.is_error]
    assert [d.code for d in errs] == ["E830"] and "text_ext is empty" in errs[0].message
    good = compile_text(head + "(image = image, label = label)" + tail)
    assert not [d for d in good.diagnostics if d.is_error and d.code == "E830"]

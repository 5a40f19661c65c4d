"""HFDataset: local Hugging Face datasets (skipped where the optional `datasets` is missing)."""

import json
import os
import sys
import tempfile

import pytest
import torch
from PIL import Image

from l3m.data.sources import HFDataset
from l3m.data.tokens import decode_caption


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    src = HFDataset(str(tmp_path), image_field=None, text_field="text", label_field=None, batch_size=2)
    assert src.spec() == {"text": ((77,), torch.long)}  # planning needs no package
    with pytest.raises(ImportError, match=r"pip install l3m\[hf\]"):
        len(src)


def test_needs_a_field():
    with pytest.raises(ValueError, match="at least one"):
        HFDataset("x", image_field=None, text_field=None, label_field=None)


@pytest.fixture
def datasets_lib():
    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="l3m-hf-cache-"))
    return pytest.importorskip("datasets")


def test_jsonl_text_and_labels(datasets_lib, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"caption": f"item {i}", "y": i % 3}) for i in range(5)))
    src = HFDataset(
        str(path), image_field=None, text_field="caption", label_field="y", seq_len=12, batch_size=2
    )
    assert len(src) == 5
    s = src[4]
    assert set(s) == set(src.spec()) == {"text", "label"}
    assert decode_caption(s["text"]) == "item 4" and s["label"] == 1 and s["text"].shape == (12,)
    with pytest.raises(ValueError, match=r"no field\(s\) \['nope'\].*drop the port: text_field = null"):
        len(HFDataset(str(path), image_field=None, text_field="nope", label_field=None))


def test_saved_dataset_with_images(datasets_lib, tmp_path):
    images = [Image.new("RGB", (10, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    ds = datasets_lib.Dataset.from_dict({"image": images, "label": [0, 1, 2]})
    ds = ds.cast_column("image", datasets_lib.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    src = HFDataset(str(tmp_path / "saved"), image_size=4, normalize=False, batch_size=2)
    assert len(src) == 3
    s = src[1]
    assert s["image"].shape == (3, 4, 4) and s["label"] == 1
    assert torch.allclose(s["image"][1], torch.ones(4, 4)) and torch.allclose(
        s["image"][0], torch.zeros(4, 4)
    )


def test_image_folder_directory(datasets_lib, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    src = HFDataset(str(tmp_path), image_size=8, batch_size=2)
    labels = sorted(int(src[i]["label"]) for i in range(len(src)))
    assert labels == [0, 0, 1, 1]


def test_local_only(datasets_lib):
    src = HFDataset("someone/some-hub-dataset", batch_size=2)
    with pytest.raises(FileNotFoundError, match="local files only"):
        len(src)

"""Every source on small data: outputs, `spec()` agreement, splits, errors."""

import json

import pytest
import torch
from PIL import Image

from l3m.data import embedded
from l3m.data.sources import (
    DigitsImages,
    DigitsImageText,
    ImageFolder,
    ImageTextJSONL,
    Synthetic,
    TextBytes,
    TextFiles,
    TextJSONL,
)
from l3m.data.tokens import decode_caption
from l3m.registry import entries


def _check_spec(source, i=0):
    """A sample has exactly the ports, shapes and dtypes that spec() promised."""
    sample = source[i]
    spec = source.spec()
    assert set(sample) == set(spec)
    declared = type(source).outputs
    assert {p for p in declared if not p.endswith("?")} <= set(spec) <= {p.rstrip("?") for p in declared}
    for port, (shape, dtype) in spec.items():
        assert tuple(sample[port].shape) == shape, port
        assert sample[port].dtype == dtype, port
    return sample


def _png(path, colour, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_every_registered_source_declares_ports_matching_its_spec_and_annotations():
    for e in entries("source"):
        assert e.outputs, e.name
        for p in e.signature.parameters.values():
            assert p.name in e.type_hints, f"{e.name}.{p.name} lacks an annotation"
        assert "batch_size" in e.signature.parameters


def test_digits_images():
    train = DigitsImages("train", image_size=12, batch_size=4)
    test = DigitsImages("test", image_size=12, batch_size=4)
    assert len(train) + len(test) == 1797
    s = _check_spec(train, 5)
    assert s["image"].shape == (3, 12, 12)
    assert train._data[0].min() >= -1.0 and train._data[0].max() <= 1.0
    assert torch.equal(s["image"][0], s["image"][2])  # greyscale repeated
    # The sample is the digit the split names, resized.
    images, labels = embedded.digits()
    idx = embedded.digits_split("train", 0.8, 0)
    assert s["label"] == labels[idx[5]]
    raw = DigitsImages("train", image_size=8, batch_size=4, normalize=False)
    assert torch.allclose(raw[5]["image"][0], images[idx[5]])


def test_digits_image_text_captions_name_the_label():
    src = DigitsImageText("test", batch_size=4, seq_len=32)
    for i in range(20):
        s = _check_spec(src, i)
        caption = decode_caption(s["text"])
        name = embedded.DIGIT_NAMES[int(s["label"])]
        assert caption in {t.format(name) for t in src.templates}
    prompts = src.class_prompts()
    assert prompts.shape == (10, 32)
    assert decode_caption(prompts[3]) == "a photo of the digit three"


def test_digits_image_text_rejects_a_seq_len_that_would_cut_captions():
    with pytest.raises(ValueError, match="too short"):
        DigitsImageText(batch_size=4, seq_len=16)
    ok = DigitsImageText(batch_size=4, seq_len=16, templates=["digit {}"])
    assert decode_caption(ok[0]["text"]).startswith("digit ")


def test_text_bytes_stdlib():
    src = TextBytes(seq_len=32, batch_size=2, max_bytes=200_000)
    test = TextBytes(seq_len=32, batch_size=2, split="test", max_bytes=200_000)
    a, b = _check_spec(src, 0), src[1]
    assert torch.equal(a["tokens"][1:], a["targets"][:-1])
    assert a["targets"][-1] == b["tokens"][0]  # windows are contiguous
    assert len(src.stream) + len(test.stream) == 200_000
    first = embedded.stdlib_files()[0].read_bytes()[:33]
    assert bytes(a["tokens"].tolist()) == first[:32]
    assert len(test) == (len(test.stream) - 1) // 32


def test_text_files_reads_sorted_utf8_files_and_splits(tmp_path):
    (tmp_path / "b.txt").write_text("0123456789" * 3)
    (tmp_path / "a.txt").write_text("abcdefghij" * 3)
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe not utf8")
    (tmp_path / "skip.md").write_text("never read")
    train = TextFiles(str(tmp_path), seq_len=4, batch_size=2, test_fraction=0.25)
    test = TextFiles(str(tmp_path), seq_len=4, batch_size=2, test_fraction=0.25, split="test")
    stream = ("abcdefghij" * 3 + "0123456789" * 3).encode()
    assert bytes(train.stream.tolist()) + bytes(test.stream.tolist()) == stream
    assert len(train) == (45 - 1) // 4
    _check_spec(train)
    got = b"".join(bytes(train[i]["tokens"].tolist()) for i in range(len(train)))
    assert got == stream[: len(train) * 4]
    capped = TextFiles(str(tmp_path / "*.txt"), seq_len=4, batch_size=2, max_bytes=20)
    assert len(capped.stream) == int(20 * 0.95)  # capped, then the 5% test tail removed


def test_text_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        len(TextFiles(str(tmp_path / "missing"), batch_size=2))
    (tmp_path / "a.txt").write_text("tiny")
    with pytest.raises(ValueError, match="seq_len"):
        len(TextFiles(str(tmp_path), seq_len=64, batch_size=2))


def test_text_bytes_on_a_directory(tmp_path):
    (tmp_path / "x.py").write_text("print('hello')\n" * 10)
    src = TextBytes(str(tmp_path), seq_len=8, batch_size=2, test_fraction=0.1)
    assert bytes(src[0]["tokens"].tolist()) == b"print('h"


def test_text_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["alpha", "beta", "gamma"])) + "\n"
    )
    src = TextJSONL(str(path), seq_len=3, batch_size=1, separator="|", test_fraction=0.1)
    data = b"alpha|beta|gamma"
    assert bytes(src.stream.tolist()) == data[: int(len(data) * 0.9)]
    _check_spec(src)
    other = TextJSONL(str(path), field="id", batch_size=1)
    with pytest.raises(ValueError, match=r"docs.jsonl:1: expected a string field 'id'"):
        len(other)
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        len(TextJSONL(str(tmp_path / "bad.jsonl"), batch_size=1))


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(3):
            _png(root / "train" / cls / f"{i}.png", colour)
    src = ImageFolder(str(root), image_size=8, batch_size=2, split="train", normalize=False)
    assert len(src) == 6 and src.classes == ["cat", "dog"]
    s = _check_spec(src, 0)
    assert s["label"] == 0 and torch.allclose(s["image"][0], torch.ones(8, 8))
    assert src[5]["label"] == 1 and torch.allclose(src[5]["image"][2], torch.ones(8, 8))
    aug = ImageFolder(str(root / "train"), image_size=6, batch_size=2, augment="randaug")
    assert aug[0]["image"].shape == (3, 6, 6)


def test_image_folder_spec_needs_no_files():
    src = ImageFolder("/nonexistent/imagenet", image_size=32, batch_size=2)
    assert src.spec() == {"image": ((3, 32, 32), torch.float32), "label": ((), torch.long)}
    with pytest.raises(FileNotFoundError, match="imagenet"):
        len(src)
    with pytest.raises(ValueError, match="augment"):
        ImageFolder("/x", augment="flip")


def test_image_text_jsonl(tmp_path):
    _png(tmp_path / "pics" / "red.png", (255, 0, 0))
    _png(tmp_path / "pics" / "green.png", (0, 255, 0), size=(5, 9))
    lines = [{"image": "pics/red.png", "text": "a red square"}, {"image": "pics/green.png", "text": "green"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    src = ImageTextJSONL(
        str(tmp_path / "pairs.jsonl"), image_size=4, seq_len=16, batch_size=1, normalize=False
    )
    assert len(src) == 2
    s = _check_spec(src)
    assert decode_caption(s["text"]) == "a red square"
    assert torch.allclose(s["image"][0], torch.ones(4, 4)) and torch.allclose(
        s["image"][1], torch.zeros(4, 4)
    )
    assert decode_caption(src[1]["text"]) == "green"
    moved = ImageTextJSONL(str(tmp_path / "pairs.jsonl"), image_root=str(tmp_path / "nowhere"), batch_size=1)
    with pytest.raises(ValueError, match=r"nowhere/pics/red.png: cannot decode image: FileNotFoundError"):
        moved[0]  # a DataError (l3m.data.errors): the loader's on_error policy decides


@pytest.mark.parametrize("kind", ["image", "tokens", "image_text"])
def test_synthetic_is_deterministic_and_matches_spec(kind):
    src = Synthetic(kind, image_size=8, seq_len=6, length=10, batch_size=2, seed=1)
    a = _check_spec(src, 3)
    b = Synthetic(kind, image_size=8, seq_len=6, length=10, batch_size=2, seed=1)[3]
    c = Synthetic(kind, image_size=8, seq_len=6, length=10, batch_size=2, seed=2)[3]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    if kind == "tokens":
        assert torch.equal(a["input"][1:], a["target"][:-1])
    if kind == "image_text":
        assert a["target"][0] == 1 and a["target"][-1] == 2
    with pytest.raises(IndexError):
        src[10]

"""Bad data: `DataError` names file and offset; the loader raises it as one line or, with
`on_error = skip`, replaces the sample deterministically, counts it and stops past a fraction;
`l3m train` exits 1 with that line and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from l3m.data.errors import DataError, DataErrorLimit
from l3m.data.loader import build_loader
from l3m.data.sources import HFDataset, ImageFolder
from l3m.data.sources.base import Source

ROOT = Path(__file__).resolve().parents[2]


class Flaky(Source):
    """Sample i is `i`; the indices in `bad` raise DataError."""

    outputs = ("x",)

    def __init__(self, n: int, bad: set[int], batch_size: int = 4) -> None:
        super().__init__(batch_size)
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i in self.bad:
            raise DataError(f"flaky.bin@{i * 100}", "cannot decode\nsample")
        return {"x": torch.tensor(i)}

    def spec(self):
        return {"x": ((), torch.long)}


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_is_one_line_naming_the_place(workers):
    loader = build_loader(Flaky(16, {5}), shuffle=False, num_workers=workers)
    next(loader)
    with pytest.raises(DataError) as info:
        next(loader)
    assert str(info.value) == "flaky.bin@500: cannot decode sample"
    loader.close()


def test_skip_replaces_with_the_next_sample_counts_and_resumes():
    src = Flaky(40, {5, 6, 21})
    full = build_loader(src, seed=1, num_workers=2, on_error="skip", max_error_fraction=0.5)
    want, errors = [], []
    for _ in range(10):  # one epoch: 10 batches of 4
        want.append(next(full)["x"])
        errors.append(full.data_errors)
    flat = torch.cat(want).tolist()
    assert 5 not in flat and 6 not in flat and 21 not in flat and flat.count(7) == 3  # 5 and 6 -> 7
    assert full.data_errors == 4 and full.samples_seen == 40  # 5 (5, 6), 6 (6), 21 (21)
    part = build_loader(src, seed=1, num_workers=2, on_error="skip", max_error_fraction=0.5)
    for _ in range(7):
        next(part)
    state = part.state_dict()
    assert state["data_errors"] == errors[6] and state["samples_seen"] == 28
    again = build_loader(src, seed=1, num_workers=2, on_error="skip", max_error_fraction=0.5)
    again.load_state_dict(state)
    for w in want[7:]:
        assert torch.equal(next(again)["x"], w)
    assert again.data_errors == full.data_errors
    for loader in (full, part, again):
        loader.close()


def test_too_many_bad_samples_stop_the_run():
    loader = build_loader(Flaky(40, {3, 4, 9}), shuffle=False, on_error="skip", max_error_fraction=0.001)
    # The first batch replaces index 3 (3 and 4 are bad): 2 errors, above 0.001 * 1000 samples.
    with pytest.raises(DataErrorLimit, match=r"2 of 4 samples could not be read.*the last: flaky.bin@400"):
        next(loader)


def test_the_fraction_is_measured_over_a_window():
    loader = build_loader(Flaky(40, {3, 4, 9}), shuffle=False, on_error="skip", max_error_fraction=0.003)
    for _ in range(2):
        next(loader)
    assert loader.data_errors == 3  # 3 allowed (0.003 of at least 1000 samples)
    with pytest.raises(DataErrorLimit, match="4 of 12 samples"):
        next(loader)


def test_every_bad_sample_in_a_row():
    loader = build_loader(Flaky(8, set(range(8))), shuffle=False, on_error="skip", max_error_fraction=1.0)
    with pytest.raises(DataError, match="8 samples in a row from index 0 could not be read"):
        next(loader)


def _png(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)


def test_image_folder_bad_image_decodes_in_workers_skips_and_resumes(tmp_path):
    for c, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for i in range(6):
            _png(tmp_path / c / f"{i}.png", colour)
    (tmp_path / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    src = ImageFolder(str(tmp_path), image_size=4, batch_size=3, normalize=False, augment="crop_flip")
    with pytest.raises(DataError, match=r"b/3.png: cannot decode image"):
        src[9]
    full = build_loader(src, seed=2, num_workers=2, on_error="skip", max_error_fraction=1.0)
    want = [next(full) for _ in range(8)]  # two epochs of 4 batches: the bad image comes up twice
    assert full.data_errors == 2
    part = build_loader(src, seed=2, num_workers=2, on_error="skip", max_error_fraction=1.0)
    for _ in range(3):
        next(part)
    again = build_loader(src, seed=2, num_workers=2, on_error="skip", max_error_fraction=1.0)
    again.load_state_dict(part.state_dict())
    for w in want[3:]:
        got = next(again)
        assert torch.equal(got["image"], w["image"]) and torch.equal(got["label"], w["label"])
    for loader in (full, part, again):
        loader.close()


def test_arrow_dataset_decodes_in_workers_and_resumes(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (6, 6), (i * 20, 255 - i * 20, 0)) for i in range(10)]
    ds = datasets.Dataset.from_dict({"image": images, "label": list(range(10))})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "saved"))
    src = HFDataset(str(tmp_path / "saved"), image_size=4, normalize=False, batch_size=2, augment="crop_flip")
    full = build_loader(src, seed=4, num_workers=2)
    want = [next(full) for _ in range(8)]  # past one epoch of 5 batches
    part = build_loader(src, seed=4, num_workers=2)
    for _ in range(3):
        next(part)
    again = build_loader(src, seed=4, num_workers=2)
    again.load_state_dict(part.state_dict())
    for w in want[3:]:
        got = next(again)
        assert torch.equal(got["image"], w["image"]) and torch.equal(got["label"], w["label"])
    assert sorted(torch.cat([w["label"] for w in want[:5]]).tolist()) == list(range(10))
    for loader in (full, part, again):
        loader.close()


def test_arrow_dataset_undecodable_image_names_path_and_record(tmp_path):
    datasets = pytest.importorskip("datasets")
    import io

    good = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(good, format="PNG")
    rows = [{"bytes": good.getvalue(), "path": None}, {"bytes": b"\x89PNG\r\n\x1a\n junk", "path": None}]
    ds = datasets.Dataset.from_dict({"image": rows, "label": [0, 1]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    src = HFDataset(str(tmp_path / "saved"), image_size=4, batch_size=1)
    assert src[0]["image"].shape == (3, 4, 4)
    with pytest.raises(DataError, match=r"saved\[1\]: cannot (read record|decode image)"):
        src[1]


# ----------------------------------------------------------------------------------------- l3m train

PROGRAM = """l3m 1
data {{
  {settings}
  train: ImageFolder(root = "{root}", image_size = 8, batch_size = 4, normalize = false) -> image, label
}}
model vit {{
  preprocessor {{ patch: PatchEmbed(dim = 16, patch = 4, in_chans = 3) image -> x }}
  trunk        {{ blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }}
  postprocessor {{ pool: AvgPool() x -> x }}
  head         {{ cls: Classifier(dim = 16, num_classes = 2) x -> logits }}
}}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW(lr = 1e-2)
train {{ steps = 4, log_every = 1 }}
log {{ wandb = "disabled", console = "plain" }}
"""


def _train(tmp_path: Path, settings: str) -> subprocess.CompletedProcess:
    root = tmp_path / "imgs"
    for c, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for i in range(4):
            _png(root / c / f"{i}.png", colour)
    (root / "b" / "2.png").write_bytes(b"GIF89a truncated")
    path = tmp_path / "bad.l3m"
    path.write_text(PROGRAM.format(root=root, settings=settings))
    return subprocess.run([sys.executable, "-m", "l3m", "train", str(path), "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_stops_with_one_line_and_exit_1(tmp_path):
    proc = _train(tmp_path, "")
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "b/2.png: cannot decode image" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "ckpt").exists() or not any((tmp_path / "run" / "ckpt").iterdir())


def test_cli_skip_counts_bad_samples_in_the_metrics(tmp_path):
    proc = _train(tmp_path, "on_error = skip\n  max_error_fraction = 0.5")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counts = [r["data_errors"] for r in rows if r.get("split") == "train"]
    assert len(counts) == 4 and counts == sorted(counts) and counts[-1] == 2  # 2 epochs of 8 samples


# ----------------------------------------------------------------------------------------- the file

SETTINGS = """l3m 1
data {{
  {settings}
  train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets
}}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }}
  head         {{ lm: LMHead(16, 256) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
"""


def test_data_settings_are_checked_like_other_sections(compile_text):
    ok = compile_text(SETTINGS.format(settings="on_error = skip  max_error_fraction = 0.05"))
    assert ok.ok, [d.message for d in ok.errors]
    assert ok.program.section("data") == {"on_error": "skip", "max_error_fraction": 0.05}
    assert [n.name for n in ok.program.of_role("source")] == ["train"]
    typo = compile_text(SETTINGS.format(settings="on_eror = skip"))
    (d,) = typo.errors
    assert d.code == "E602" and "'data' has no setting 'on_eror'" in d.message and "on_error" in (d.help or "")
    bad = compile_text(SETTINGS.format(settings="on_error = skp"))
    (d,) = bad.errors
    assert d.code == "E602" and "'raise', 'skip'" in d.message and "skip" in (d.help or "")
    over = compile_text(SETTINGS.format(settings=""), overrides=["data.on_error=skip"])
    assert over.ok and over.program.section("data") == {"on_error": "skip"}

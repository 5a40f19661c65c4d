"""Hugging Face `datasets` read from local files only (an optional extra: `pip install l3m[hf]`).

`path` is a folder written by `Dataset.save_to_disk`, a folder of data files that `datasets`
recognises (e.g. an image folder, Parquet shards), or a file/glob of .json/.jsonl/.csv/.parquet/
.txt/.arrow files. Nothing is fetched from the Hub: a path that does not exist is an error.
"""

from __future__ import annotations

import io
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from l3m.data.errors import guarded
from l3m.data.sources.base import Spec
from l3m.data.sources.captions import caption_encoder, encode, require
from l3m.data.sources.images import ImageSource
from l3m.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Interpolation, load_rgb
from l3m.registry import register

_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _datasets():
    # Local files only: a folder's README.md may name remote data files, which `datasets` would fetch.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "HFDataset needs the Hugging Face `datasets` package, an optional extra: pip install l3m[hf]"
        ) from None
    return datasets


def load_local(path: str, split: str) -> Any:
    """A `datasets.Dataset` for one split of local files (see the module docstring)."""
    ds_lib = _datasets()
    p = Path(path).expanduser()
    is_glob = any(c in path for c in "*?[")
    if p.is_dir() and any((p / m).exists() for m in _SAVED_MARKERS):
        ds = ds_lib.load_from_disk(str(p))
        if isinstance(ds, ds_lib.DatasetDict):
            if split not in ds:
                raise KeyError(f"HFDataset: {path!r} has splits {sorted(ds)}, not {split!r}")
            ds = ds[split]
        return ds
    if p.is_dir():
        scripts = sorted(s.name for s in p.glob("*.py"))
        if scripts:  # `datasets` < 3 would run `<folder>/<folder>.py`: code from a shared folder
            raise ValueError(f"HFDataset: {path!r} holds a dataset script ({scripts[0]}); l3m never runs one. "
                             "Point it at the data files or a `save_to_disk` folder instead")
        return ds_lib.load_dataset(str(p), split=split)
    if p.is_file() or is_glob:
        suffix = Path(path.rstrip("*")).suffix if is_glob else p.suffix
        if suffix not in _BUILDERS:
            raise ValueError(
                f"HFDataset: cannot tell the format of {path!r}; use one of {', '.join(_BUILDERS)}"
            )
        return ds_lib.load_dataset(_BUILDERS[suffix], data_files={split: path}, split=split)
    raise FileNotFoundError(f"HFDataset reads local files only, and {path!r} does not exist")


def _to_pil(value: Any) -> Any:
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, str):
        return load_rgb(value)
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return load_rgb(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    import numpy as np

    return Image.fromarray(np.asarray(value, dtype=np.uint8)).convert("RGB")


@register("source")
class HFDataset(ImageSource):
    """Records of a local Hugging Face dataset as ports `image`, `text` and `label`.

    Each port exists only when its field is set (`text_field = None` drops `text`), so the ports
    are optional and are best bound by name. Images go through the declared transform; text is
    a byte caption (`l3m.data.tokens`, vocabulary 259) of `seq_len`; labels are integers.
    """

    outputs = ("image?", "text?", "label?")
    shapes = "-> image: float[B, 3, image_size, image_size], text: long[B, seq_len] < tokenizer_vocab, label: long[B]"
    token_policy = "caption"

    def __init__(
        self,
        path: str,
        split: str = "train",
        image_field: str | None = "image",
        text_field: str | None = None,
        label_field: str | None = "label",
        image_size: int = 224,
        seq_len: int = 77,
        batch_size: int = 32,
        augment: Literal["none", "crop_flip", "randaug"] = "none",
        min_scale: float = 0.08,
        normalize: bool = True,
        mean: list[float] = IMAGENET_MEAN,
        std: list[float] = IMAGENET_STD,
        shuffle: bool = True,
        drop_last: bool = True,
        interpolation: Interpolation = "bilinear",
        color_jitter: list[float] = (),
        color_jitter_prob: float = 1.0,
        resize: int = 0,
        tokenizer: str = "bytes",
        text_clean: Literal["none", "lower", "nopunct"] = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(
            image_size, batch_size, augment, min_scale, normalize, mean, std, shuffle, drop_last,
            interpolation=interpolation, color_jitter=color_jitter, color_jitter_prob=color_jitter_prob, resize=resize,
        )
        self.fields = {
            port: field
            for port, field in (("image", image_field), ("text", text_field), ("label", label_field))
            if field
        }
        if not self.fields:
            raise ValueError("HFDataset: set at least one of image_field, text_field, label_field")
        if "text" in self.fields and seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 (BOS and EOS), got {seq_len}")
        self.path, self.split, self.seq_len = path, split, seq_len
        if "text" in self.fields:
            self.encoder = caption_encoder(type(self).__name__, tokenizer, seq_len, text_clean, pad_token)

    @cached_property
    def dataset(self) -> Any:
        ds = load_local(self.path, self.split)
        missing = [f for f in self.fields.values() if f not in ds.column_names]
        if missing:
            unset = [f"{port}_field = null" for port, f in self.fields.items() if f in missing]
            raise ValueError(f"HFDataset: {self.path!r} has no field(s) {missing}; it has {ds.column_names} "
                             f"(choose one of those, or drop the port: {', '.join(unset)})")
        return ds

    def __len__(self) -> int:
        if "text" in self.fields:
            require(self.encoder)  # no tokenizer given: say so here, not in a worker
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        where = f"{self.path}[{int(i)}]"
        rec = guarded(where, "cannot read record", lambda: self.dataset[int(i)])
        out = {}
        if "image" in self.fields:
            value = rec[self.fields["image"]]
            out["image"] = guarded(where, "cannot decode image", lambda: self.transform(_to_pil(value)))
        if "text" in self.fields:
            out["text"] = encode(self.encoder, str(rec[self.fields["text"]]))
        if "label" in self.fields:
            out["label"] = torch.tensor(int(rec[self.fields["label"]]), dtype=torch.long)
        return out

    def spec(self) -> Spec:
        full = {"image": self.image_spec(), "text": ((self.seq_len,), torch.long), "label": ((), torch.long)}
        return {port: full[port] for port in self.fields}

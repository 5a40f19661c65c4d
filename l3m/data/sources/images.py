"""Images from disk: class folders (`ImageFolder`) and image-caption pairs (`ImageTextJSONL`).

Both scan their files on first use, not at construction, so `spec()` (planning a model on the
meta device) works on a machine that does not hold the data.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import torch

from l3m.data.errors import guarded
from l3m.data.sources.base import Source, Spec, find_files
from l3m.data.sources.captions import caption_encoder, encode, require
from l3m.data.sources.text import iter_jsonl
from l3m.data.transforms import (
    AUGMENTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Interpolation,
    check_pipeline_options,
    image_transform,
    load_rgb,
)
from l3m.registry import register


class ImageSource(Source):
    """Shared image arguments: size, augmentation and normalisation (see `l3m.data.transforms`).

    `interpolation`, `color_jitter` (+ `color_jitter_prob`) and `resize` (evaluation's short side
    before the centre crop) let a file state a classic torchvision recipe exactly, e.g.
    RandomResizedCrop(bicubic) + flip + RandomApply(ColorJitter, p = 0.8) and Resize(256) + CenterCrop(224).
    """

    def __init__(
        self,
        image_size: int,
        batch_size: int,
        augment: str,
        min_scale: float,
        normalize: bool,
        mean: list[float],
        std: list[float],
        shuffle: bool,
        drop_last: bool,
        *,
        interpolation: str = "bilinear",
        color_jitter: list[float] = (),
        color_jitter_prob: float = 1.0,
        resize: int = 0,
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size, self.augment, self.min_scale = image_size, augment, min_scale
        self.mean, self.std = (list(mean), list(std)) if normalize else (None, None)
        self.pipeline_options = dict(
            interpolation=interpolation,
            color_jitter=tuple(color_jitter),
            color_jitter_prob=color_jitter_prob,
            resize=resize,
        )
        check_pipeline_options(**self.pipeline_options)  # bad settings fail at construction, not in a worker

    @cached_property
    def transform(self):
        return image_transform(
            self.image_size, self.augment, self.mean, self.std, self.min_scale, **self.pipeline_options
        )

    def image_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (3, self.image_size, self.image_size), torch.float32


@register("source")
class ImageFolder(ImageSource):
    """`root/<class>/<image>` folders (torchvision's layout): labels are the sorted class names' indices.

    `split` names a sub-folder of `root` ("train", "val"), or "" for `root` itself.
    """

    outputs = ("image", "label")
    shapes = "-> image: float[B, 3, image_size, image_size], label: long[B]"

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 32,
        split: str = "",
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
    ) -> None:
        super().__init__(
            image_size, batch_size, augment, min_scale, normalize, mean, std, shuffle, drop_last,
            interpolation=interpolation, color_jitter=color_jitter, color_jitter_prob=color_jitter_prob, resize=resize,
        )
        self.root, self.split = root, split

    @cached_property
    def _folder(self):
        from torchvision.datasets import ImageFolder as TVImageFolder

        path = Path(self.root).expanduser() / self.split if self.split else Path(self.root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"ImageFolder: no such directory {str(path)!r}")
        return TVImageFolder(str(path))

    @property
    def classes(self) -> list[str]:
        return list(self._folder.classes)

    def __len__(self) -> int:
        return len(self._folder.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, label = self._folder.samples[i]
        image = guarded(path, "cannot decode image", lambda: self.transform(load_rgb(path)))
        return {"image": image, "label": torch.tensor(label, dtype=torch.long)}

    def spec(self) -> Spec:
        return {"image": self.image_spec(), "label": ((), torch.long)}


@register("source")
class ImageTextJSONL(ImageSource):
    """Image-caption pairs from JSON Lines: `{"image": "<path>", "text": "<caption>"}` per line.

    Relative image paths are taken from `image_root`, or from the JSONL file's folder when
    `image_root` is "". Captions use the byte caption convention of `l3m.data.tokens`
    (vocabulary 259), truncated to `seq_len` with the EOS kept.
    """

    outputs = ("image", "text")
    shapes = "-> image: float[B, 3, image_size, image_size], text: long[B, seq_len] < tokenizer_vocab"
    token_policy = "caption"

    def __init__(
        self,
        path: str,
        image_root: str = "",
        image_size: int = 224,
        seq_len: int = 77,
        batch_size: int = 32,
        image_field: str = "image",
        text_field: str = "text",
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
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 (BOS and EOS), got {seq_len}")
        self.encoder = caption_encoder(type(self).__name__, tokenizer, seq_len, text_clean, pad_token)
        self.path, self.image_root, self.seq_len = path, image_root, seq_len
        self.image_field, self.text_field = image_field, text_field

    @cached_property
    def records(self) -> list[tuple[str, str]]:
        """(absolute image path, caption) for every line of every file, in order."""
        out = []
        for file in find_files(self.path):
            base = Path(self.image_root).expanduser() if self.image_root else file.parent
            for lineno, rec in enumerate(iter_jsonl(file), start=1):
                if rec is None:
                    continue
                image = rec.get(self.image_field) if isinstance(rec, dict) else None
                text = rec.get(self.text_field) if isinstance(rec, dict) else None
                if not isinstance(image, str) or not isinstance(text, str):
                    raise ValueError(
                        f"{file}:{lineno}: expected string fields {self.image_field!r} and {self.text_field!r}"
                    )
                out.append((str(base / image), text))
        return out

    def __len__(self) -> int:
        require(self.encoder)  # no tokenizer given: say so here, not in a worker
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, text = self.records[i]
        pixels = guarded(image, "cannot decode image", lambda: self.transform(load_rgb(image)))
        return {"image": pixels, "text": encode(self.encoder, text)}

    def spec(self) -> Spec:
        return {"image": self.image_spec(), "text": ((self.seq_len,), torch.long)}

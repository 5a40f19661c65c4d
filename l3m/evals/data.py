"""The data a suite is pointed at, read the way the model was trained to see it.

Images are resized and normalised as the program's own image source does (its `image_size`, and
its mean/std, or [-1, 1] for the digits sources); captions and prompts go through the program's
caption tokenizer. Class folders use torchvision's layout (`root/<class>/<image>`, labels in
sorted folder order); image-text pairs are JSON Lines `{"image": PATH, "text": CAPTION}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l3m.evals.errors import EvalInputError

DIGITS_MEAN = DIGITS_STD = [0.5, 0.5, 0.5]  # DigitsImages(normalize = true) maps [0, 1] to [-1, 1]
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class ImageSettings:
    image_size: int
    mean: list[float] | None
    std: list[float] | None
    interpolation: str = "bilinear"
    resize: int = 0  # evaluation's short side before the centre crop (0: resize to image_size)

    def source_kwargs(self) -> dict[str, Any]:
        """The image arguments of `ImageFolder` / `ImageTextJSONL`: in order, no augmentation."""
        return dict(image_size=self.image_size, normalize=self.mean is not None, mean=self.mean or [0.0] * 3,
                    std=self.std or [1.0] * 3, interpolation=self.interpolation, resize=self.resize,
                    shuffle=False, drop_last=False)


def image_settings(sources: dict[str, Any], image_size: int | None = None) -> ImageSettings:
    """From the program's image sources, an unaugmented (evaluation) one first: its size (unless
    `image_size` is given), normalisation, interpolation and evaluation resize."""
    found = [s for s in sources.values() if isinstance(getattr(s, "image_size", None), int)]
    found.sort(key=lambda s: getattr(s, "augment", "none") != "none")
    if not found:
        if image_size is None:
            raise EvalInputError("the program has no image source to take the image size from: give --image-size")
        return ImageSettings(image_size, None, None)
    src = found[0]
    if hasattr(src, "mean"):
        mean, std = src.mean, src.std
    else:
        mean, std = (DIGITS_MEAN, DIGITS_STD) if getattr(src, "normalize", False) else (None, None)
    options = getattr(src, "pipeline_options", {})
    unaugmented = getattr(src, "augment", "none") == "none"
    resize = options.get("resize", 0) if unaugmented and not image_size else 0
    return ImageSettings(image_size or src.image_size, mean, std, options.get("interpolation", "bilinear"), resize)


def caption_encoder(sources: dict[str, Any]):
    """The program's caption tokenizer (`encoder` of its image-text source)."""
    for src in sources.values():
        enc = getattr(src, "encoder", None)
        if enc is not None and hasattr(enc, "batch"):
            if type(enc).__name__ == "Unset":
                raise EvalInputError("the program's caption tokenizer is not set (e.g. VOCAB_FILE): "
                                     "set it as for training")
            return enc
    raise EvalInputError("the program has no image-text source to take the caption tokenizer from")


def encode_texts(encoder, texts: list[str]) -> torch.Tensor:
    from l3m.data.sources.captions import encode_many

    return encode_many(encoder, texts)


def image_folder(root: str, settings: ImageSettings):
    """The `ImageFolder` source over `root`, in order, every image once."""
    from l3m.data.sources.images import ImageFolder

    if not Path(root).is_dir():
        raise EvalInputError(f"no such image folder: {root}")
    src = ImageFolder(root=root, **settings.source_kwargs())
    try:
        classes = src.classes
    except (OSError, FileNotFoundError, RuntimeError) as e:  # torchvision: a class folder without images
        raise EvalInputError(f"{root}: expected one folder of images per class (root/<class>/<image>): "
                             f"{str(e).rstrip('.')}") from None
    if not len(src):
        raise EvalInputError(f"{root}: no images in its class folders")
    if len(classes) < 2:
        raise EvalInputError(f"{root}: needs at least two class folders, found {len(classes)}")
    return src


def batches(src, batch_size: int, keys: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """The source's samples in order, stacked `batch_size` at a time (in this process)."""
    n = len(src)
    for start in range(0, n, batch_size):
        items = [src[i] for i in range(start, min(n, start + batch_size))]
        yield {k: torch.stack([it[k] for it in items]) for k in keys}


def read_lines(path: str, what: str) -> list[str]:
    """The non-empty, stripped lines of a text file (`#` starts a comment line)."""
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"no such {what} file: {path}")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise EvalInputError(f"cannot read {what} file {path}: {e}") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise EvalInputError(f"{what} file {path} is empty")
    return lines


def class_names(folders: list[str], path: str | None) -> list[str]:
    """One name per class folder (sorted folder order): the file's lines, or the folder names."""
    if path is None:
        return [f.replace("_", " ") for f in folders]
    names = read_lines(path, "classes")
    if len(names) != len(folders):
        raise EvalInputError(f"{path} names {len(names)} classes but the image folder has {len(folders)} "
                             f"({', '.join(folders[:5])}{', ...' if len(folders) > 5 else ''}): "
                             "one line per class folder, in sorted folder order")
    return names


def templates(path: str | None) -> list[str]:
    if path is None:
        return [DEFAULT_TEMPLATE]
    out = read_lines(path, "templates")
    bad = [t for t in out if t.count("{}") != 1]
    if bad:
        raise EvalInputError(f"{path}: each template needs exactly one '{{}}' for the class name, e.g. {bad[0]!r}")
    return out


def image_text_pairs(path: str, settings: ImageSettings, encoder):
    """The `ImageTextJSONL` source over `path`, with the program's caption tokenizer."""
    from l3m.data.sources.images import ImageTextJSONL

    if not Path(path).exists():
        raise EvalInputError(f"no such image-text file: {path}")
    src = ImageTextJSONL(path=path, seq_len=encoder.context, **settings.source_kwargs())
    src.encoder = encoder
    try:
        records = src.records
    except (OSError, ValueError) as e:
        raise EvalInputError(str(e)) from None
    if not records:
        raise EvalInputError(f"{path}: no image-text pairs")
    return src

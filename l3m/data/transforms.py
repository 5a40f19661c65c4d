"""Image pipelines built from a few declared arguments (`augment`, `image_size`, `mean`, `std`).

A file says `augment = "crop_flip"`, never a list of transform objects: the pipelines are few,
named, and the same everywhere. They draw randomness from torch's global generator, which the
loader seeds per sample (seed, epoch, index), so augmentations are reproducible and resumable.
torchvision is imported on first use, keeping `l3m lint` fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

Augment = Literal["none", "crop_flip", "randaug"]
AUGMENTS = ("none", "crop_flip", "randaug")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def image_transform(
    image_size: int,
    augment: str = "none",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    min_scale: float = 0.08,
    *,
    interpolation: str = "bilinear",
    color_jitter: Sequence[float] = (),
    color_jitter_prob: float = 1.0,
    resize: int = 0,
) -> Callable[[Any], torch.Tensor]:
    """PIL image or uint8/float tensor [C, H, W] -> float32 [C, image_size, image_size].

    - "none": resize the short side to `resize` (0: `image_size`), centre crop (evaluation);
    - "crop_flip": random resized crop (area scale in [min_scale, 1]) and horizontal flip;
    - "randaug": crop_flip followed by RandAugment (2 ops, magnitude 9).
    `interpolation` ("bilinear", "bicubic", "nearest") is used by every resize. A non-empty
    `color_jitter` = [brightness, contrast, saturation, hue] adds, after the flip of the training
    pipelines, a colour jitter applied with probability `color_jitter_prob`.
    `mean`/`std` of None skip normalisation (values stay in [0, 1]). PIL inputs stay PIL images
    until after the augmentations, so they use PIL's resampling, as torchvision's classic
    `transforms` pipelines (RandomResizedCrop ... ToTensor) do.
    """
    from torchvision.transforms import v2

    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    check_pipeline_options(interpolation, color_jitter, color_jitter_prob, resize)
    mode = getattr(v2.InterpolationMode, interpolation.upper())
    steps: list[Any] = []
    if augment == "none":
        steps += [v2.Resize(resize or image_size, interpolation=mode, antialias=True), v2.CenterCrop(image_size)]
    else:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if color_jitter:
            b, c, s, h = (float(x) for x in color_jitter)
            jitter = v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)
            steps.append(v2.RandomApply([jitter], p=color_jitter_prob) if color_jitter_prob < 1 else jitter)
        if augment == "randaug":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length ({len(mean)} vs {len(std)})")
        steps.append(v2.Normalize(list(mean), list(std)))
    return _Pipeline(v2.Compose(steps))


def check_pipeline_options(
    interpolation: str = "bilinear",
    color_jitter: Sequence[float] = (),
    color_jitter_prob: float = 1.0,
    resize: int = 0,
) -> None:
    """Raise ValueError for settings `image_transform` cannot build (without importing torchvision)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if color_jitter and len(color_jitter) != 4:
        raise ValueError(f"color_jitter is [brightness, contrast, saturation, hue], got {list(color_jitter)}")
    if any(float(x) < 0 for x in color_jitter) or (color_jitter and float(color_jitter[3]) > 0.5):
        raise ValueError(f"color_jitter values must be >= 0 and hue <= 0.5, got {list(color_jitter)}")
    if not 0.0 <= color_jitter_prob <= 1.0:
        raise ValueError(f"color_jitter_prob must be in [0, 1], got {color_jitter_prob}")
    if resize < 0:
        raise ValueError(f"resize must be non-negative (0: image_size), got {resize}")


class _Pipeline:
    """A picklable callable (worker processes may be spawned) returning plain tensors."""

    def __init__(self, compose: Any) -> None:
        self.compose = compose

    def __call__(self, image: Any) -> torch.Tensor:
        return self.compose(image).as_subclass(torch.Tensor)


# What PIL may decode a data file as (it goes by content, not by name): common raster formats only;
# an EPS file named `x.jpg` would otherwise be handed to Ghostscript, an external interpreter.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP", "GIF")


def load_rgb(path: Any) -> Any:
    """A PIL RGB image (greyscale, palette and alpha images converted) from a path or file."""
    from PIL import Image

    with Image.open(path, formats=IMAGE_FORMATS) as im:
        return im.convert("RGB")

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


def image_transform(
    image_size: int,
    augment: str = "none",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    min_scale: float = 0.08,
) -> Callable[[Any], torch.Tensor]:
    """PIL image or uint8/float tensor [C, H, W] -> float32 [C, image_size, image_size].

    - "none": resize the short side to `image_size`, centre crop (evaluation);
    - "crop_flip": random resized crop (area scale in [min_scale, 1]) and horizontal flip;
    - "randaug": crop_flip followed by RandAugment (2 ops, magnitude 9).
    `mean`/`std` of None skip normalisation (values stay in [0, 1]).
    """
    from torchvision.transforms import v2

    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    steps: list[Any] = [v2.ToImage()]
    if augment == "none":
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    else:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if augment == "randaug":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None and std is not None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length ({len(mean)} vs {len(std)})")
        steps.append(v2.Normalize(list(mean), list(std)))
    return _Pipeline(v2.Compose(steps))


class _Pipeline:
    """A picklable callable (worker processes may be spawned) returning plain tensors."""

    def __init__(self, compose: Any) -> None:
        self.compose = compose

    def __call__(self, image: Any) -> torch.Tensor:
        return self.compose(image).as_subclass(torch.Tensor)


def load_rgb(path: str) -> Any:
    """A PIL RGB image (greyscale, palette and alpha images converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")

"""Declared image pipelines."""

import pytest
import torch
from PIL import Image

from l3m.data.transforms import image_transform


def _image(w=20, h=12):
    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr)


def test_eval_pipeline_size_and_range():
    x = image_transform(8, "none", mean=None, std=None)(_image())
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and type(x) is torch.Tensor
    assert x.min() >= 0.0 and x.max() <= 1.0
    y = image_transform(8, "none", mean=[0.5] * 3, std=[0.5] * 3)(_image())
    assert torch.allclose(y, x * 2 - 1, atol=1e-6)


@pytest.mark.parametrize("augment", ["crop_flip", "randaug"])
def test_augmentations_follow_the_global_seed(augment):
    t = image_transform(8, augment)
    torch.manual_seed(1)
    a = t(_image())
    torch.manual_seed(1)
    b = t(_image())
    outs = {tuple(t(_image()).flatten().tolist()) for _ in range(4)}
    assert a.shape == (3, 8, 8) and torch.equal(a, b)
    assert len(outs) > 1  # it really is random


def test_bad_arguments():
    with pytest.raises(ValueError, match="augment"):
        image_transform(8, "mixup")
    with pytest.raises(ValueError, match="length"):
        image_transform(8, "none", mean=[0.5], std=[0.5, 0.5])

"""The declared pipelines reproduce torchvision's classic (v1) recipes draw for draw."""

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from l3m.data.sources.images import ImageFolder
from l3m.data.transforms import image_transform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _image(w=300, h=220):
    g = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def test_train_pipeline_with_bicubic_crop_and_colour_jitter():
    classic = T.Compose([
        T.RandomResizedCrop(64, scale=(0.4, 1.0), interpolation=3),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    ours = image_transform(64, "crop_flip", MEAN, STD, 0.4, interpolation="bicubic",
                           color_jitter=[0.4, 0.4, 0.2, 0.1], color_jitter_prob=0.8)
    img = _image()
    outs = []
    for seed in range(5):
        torch.manual_seed(seed)
        want = classic(img)
        torch.manual_seed(seed)
        got = ours(img)
        assert torch.allclose(got, want, atol=1e-5), seed
        outs.append(got)
    assert not torch.allclose(outs[0], outs[1])


def test_eval_pipeline_resize_then_centre_crop():
    classic = T.Compose([T.Resize(80, interpolation=3), T.CenterCrop(70), T.ToTensor(), T.Normalize(MEAN, STD)])
    ours = image_transform(70, "none", MEAN, STD, interpolation="bicubic", resize=80)
    assert torch.allclose(ours(_image()), classic(_image()), atol=1e-5)
    bilinear = image_transform(70, "none", MEAN, STD, resize=80)
    assert not torch.allclose(bilinear(_image()), classic(_image()), atol=1e-3)


def test_source_arguments_reach_the_pipeline_and_are_checked():
    src = ImageFolder(root="/nonexistent", image_size=32, augment="crop_flip", interpolation="bicubic",
                      color_jitter=[0.4, 0.4, 0.2, 0.1], color_jitter_prob=0.8)
    names = [type(t).__name__ for t in src.transform.compose.transforms]
    assert names[:3] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply"]
    assert src.transform.compose.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    with pytest.raises(ValueError, match="interpolation"):
        ImageFolder(root="/x", interpolation="lanczos")
    with pytest.raises(ValueError, match="color_jitter"):
        ImageFolder(root="/x", color_jitter=[0.4, 0.4])
    with pytest.raises(ValueError, match="color_jitter_prob"):
        ImageFolder(root="/x", color_jitter=[0.4, 0.4, 0.2, 0.1], color_jitter_prob=1.5)

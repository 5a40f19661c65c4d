"""Per-batch generators: shapes, ranges, determinism per seed, and their registry ports."""

import pytest
import torch

from l3m.data.generators import MixupCutmix, RandomMask, RandomPrefixLength
from l3m.registry import lookup


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rng_is_not_a_port():
    assert [p.name for p in lookup("RandomPrefixLength").inputs] == ["x"]
    assert [p.name for p in lookup("MixupCutmix").inputs] == ["image", "label"]
    assert [p.name for p in lookup("MixupCutmix").outputs] == ["image", "label"]


def test_random_prefix_length_range_and_determinism():
    gen = RandomPrefixLength(high=5, low=2)
    x = torch.zeros(512, 7)
    a = gen(x, rng=_rng(0))
    assert a.shape == (512,) and a.dtype == torch.long
    assert set(a.tolist()) == {2, 3, 4, 5}  # both ends reached, nothing outside
    assert torch.equal(a, gen(x, rng=_rng(0)))
    assert not torch.equal(a, gen(x, rng=_rng(1)))
    with pytest.raises(ValueError):
        RandomPrefixLength(high=1, low=2)


def test_random_mask_exact_ratio_and_determinism():
    gen = RandomMask(num_tokens=16, ratio=0.75)
    x = torch.zeros(4, 3, 8, 8)
    m, visible = gen(x, rng=_rng(0))
    assert m.shape == (4, 16) and m.dtype == torch.bool
    assert m.sum(1).tolist() == [12] * 4
    assert not torch.equal(m[0], m[1])  # per-sample masks
    assert torch.equal(m, gen(x, rng=_rng(0))[0])
    assert RandomMask(num_tokens=5, ratio=0.0)(x, rng=_rng(0))[0].sum() == 0
    # the visible tokens' indices, in increasing order
    assert visible.shape == (4, 4) and visible.dtype == torch.long
    assert torch.equal(visible, torch.stack([(~row).nonzero()[:, 0] for row in m]))


def _batch(b=6, c=4):
    g = torch.Generator().manual_seed(7)
    return torch.rand(b, 3, 8, 8, generator=g), torch.arange(b) % c


def test_mixup_cutmix_off_gives_smoothed_one_hot():
    image, label = _batch()
    gen = MixupCutmix(num_classes=4, prob=0.0, label_smoothing=0.2)
    out_image, soft = gen(image, label, rng=_rng(0))
    assert torch.equal(out_image, image)
    assert soft.shape == (6, 4)
    assert torch.allclose(soft[1], torch.tensor([0.05, 0.85, 0.05, 0.05]))


def test_mixup_mixes_images_and_labels_with_one_weight():
    image, label = _batch()
    gen = MixupCutmix(num_classes=4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    out_image, soft = gen(image, label, rng=_rng(3))
    lam = soft[0, label[0]].item()  # sample 0 mixed with sample 5 (a different class)
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(out_image, lam * image + (1 - lam) * image.flip(0), atol=1e-6)
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_cutmix_pastes_a_box_whose_area_sets_the_labels():
    image, label = _batch()
    gen = MixupCutmix(num_classes=4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(5):
        out_image, soft = gen(image, label, rng=_rng(seed))
        from_other = (out_image != image).any(1)[0].float().mean().item()  # sample 0's pasted area
        assert torch.all((out_image == image) | (out_image == image.flip(0)))
        assert soft[0, label[0]].item() == pytest.approx(1 - from_other, abs=1e-6)


def test_mixup_cutmix_determinism_per_seed():
    image, label = _batch()
    gen = MixupCutmix(num_classes=4)
    a = gen(image, label, rng=_rng(11))
    b = gen(image, label, rng=_rng(11))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    outs = {tuple(gen(image, label, rng=_rng(s))[1][0].tolist()) for s in range(6)}
    assert len(outs) > 1

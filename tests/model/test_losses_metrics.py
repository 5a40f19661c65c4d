"""Losses and metrics against straightforward formulas."""

from __future__ import annotations

import math

import pytest
import torch

from l3m.model.losses import ClassificationCE, ClipLoss, LMCrossEntropy, MoEBalance, PixelLoss, patchify
from l3m.model.metrics import Perplexity, TopKAccuracy, ZeroShotAccuracy
from l3m.registry import entries


def test_losses_and_metrics_are_registered_without_parameters():
    names = {e.name: e for e in entries("loss") + entries("metric")}
    for name in ["PixelLoss", "LMCrossEntropy", "ClipLoss", "ClassificationCE", "MoEBalance",
                 "TopKAccuracy", "Perplexity", "ZeroShotAccuracy"]:  # fmt: skip
        assert name in names
    assert names["PixelLoss"].outputs_spec == ("loss",)
    assert [p.name for p in names["PixelLoss"].inputs] == ["pred", "image", "prefix_len", "mask"]
    assert not list(TopKAccuracy().parameters()) and not list(LMCrossEntropy().parameters())


def pixel_reference(pred, image, p, prefix_len=None, norm_pix=True, eps=1e-6, shift=False, unbiased=True):
    b, c, h, w = image.shape
    errs, counts = 0.0, 0
    cols = w // p
    for i in range(b):
        for n in range((h // p) * cols):
            src = n - 1 if shift else n
            if shift and n == 0:
                continue
            if prefix_len is not None and n < int(prefix_len[i]):
                continue
            r, col = divmod(n, cols)
            t = image[i, :, r * p : (r + 1) * p, col * p : (col + 1) * p].permute(1, 2, 0).reshape(-1)
            if norm_pix:
                t = (t - t.mean()) / math.sqrt(t.var(unbiased=unbiased).item() + eps)
            errs += ((pred[i, src] - t) ** 2).mean().item()
            counts += 1
    return errs / counts


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("prefix", [None, [1, 3]])
@pytest.mark.parametrize("shift", [False, True])
def test_pixel_loss(norm_pix, prefix, shift):
    torch.manual_seed(0)
    image = torch.randn(2, 3, 4, 6)
    pred = torch.randn(2, 6, 2 * 2 * 3)
    prefix_len = torch.tensor(prefix) if prefix else None
    loss = PixelLoss(patch=2, norm_pix=norm_pix, shift=shift)(pred, image, prefix_len)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(pixel_reference(pred, image, 2, prefix_len, norm_pix, shift=shift), rel=1e-5)
    if norm_pix:  # the original's unbiased variance by default; the biased one on request
        biased = PixelLoss(patch=2, shift=shift, unbiased=False)(pred, image, prefix_len)
        want = pixel_reference(pred, image, 2, prefix_len, shift=shift, unbiased=False)
        assert biased.item() == pytest.approx(want, rel=1e-5)
        assert abs(biased.item() - loss.item()) > 1e-4


def test_pixel_loss_perfect_prediction_and_checks():
    image = torch.randn(2, 3, 4, 4)
    assert PixelLoss(patch=2, norm_pix=False)(patchify(image, 2), image).item() == 0.0
    with pytest.raises(ValueError, match="channels"):
        PixelLoss(patch=2, in_chans=1)(patchify(image, 2), image)
    with pytest.raises(ValueError, match="does not match"):
        PixelLoss(patch=2)(torch.zeros(2, 3, 12), image)


def lm_reference(logits, targets, ignore_index=-100, z_loss=0.0):
    total, z, n = 0.0, 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            t = int(targets[b, i])
            if t == ignore_index:
                continue
            lse = torch.logsumexp(logits[b, i], dim=0)
            total += (lse - logits[b, i, t]).item()
            z += lse.item() ** 2
            n += 1
    return total / n + z_loss * z / n


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_lm_cross_entropy(z_loss):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7) * 3
    targets = torch.randint(0, 7, (2, 5))
    targets[0, 1] = targets[1, 4] = -100
    got = LMCrossEntropy(z_loss=z_loss)(logits, targets)
    assert got.item() == pytest.approx(lm_reference(logits, targets, z_loss=z_loss), rel=1e-5)
    shifted = LMCrossEntropy(shift=True, z_loss=z_loss)(logits, targets)
    assert shifted.item() == pytest.approx(lm_reference(logits[:, :-1], targets[:, 1:], z_loss=z_loss), rel=1e-5)


def test_clip_loss_symmetric_infonce():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    sims = scale * img @ txt.t()
    ref = 0.0
    for i in range(4):
        ref += -(sims[i, i] - torch.logsumexp(sims[i], 0)) / 8
        ref += -(sims[i, i] - torch.logsumexp(sims[:, i], 0)) / 8
    assert ClipLoss()(img, txt, scale).item() == pytest.approx(ref.item(), rel=1e-5)
    # Matching pairs score far better than shuffled ones.
    assert ClipLoss()(img, img, torch.tensor(50.0)) < ClipLoss()(img, img.roll(1, 0), torch.tensor(50.0))


def test_classification_ce_indices_soft_and_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    target = torch.tensor([0, 4, 2])
    logp = logits.log_softmax(dim=-1)
    ref = -logp[torch.arange(3), target].mean()
    assert ClassificationCE()(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)
    soft = torch.softmax(torch.randn(3, 5), dim=-1)
    assert ClassificationCE()(logits, soft).item() == pytest.approx(-(soft * logp).sum(-1).mean().item(), rel=1e-5)
    eps = 0.1
    smoothed = torch.full((3, 5), eps / 5)
    smoothed[torch.arange(3), target] += 1 - eps
    got = ClassificationCE(label_smoothing=eps)(logits, target)
    assert got.item() == pytest.approx(-(smoothed * logp).sum(-1).mean().item(), rel=1e-5)


def test_moe_balance_scales():
    aux = torch.tensor(0.25, requires_grad=True)
    out = MoEBalance(scale=4.0)(aux)
    assert out.item() == 1.0
    out.backward()
    assert aux.grad.item() == 4.0


def test_top_k_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 2, 1, 1])
    assert TopKAccuracy(k=1)(logits, target).item() == pytest.approx(0.25)
    assert TopKAccuracy(k=2)(logits, target).item() == pytest.approx(0.75)
    assert TopKAccuracy(k=5)(logits, target).item() == pytest.approx(1.0)
    soft = torch.nn.functional.one_hot(target, 3).float() * 0.8 + 0.05
    assert TopKAccuracy(k=1)(logits, soft).item() == pytest.approx(0.25)


def test_perplexity():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    targets = torch.randint(0, 6, (2, 4))
    targets[1, 0] = -100
    assert Perplexity()(logits, targets).item() == pytest.approx(math.exp(lm_reference(logits, targets)), rel=1e-5)
    uniform = torch.zeros(1, 3, 6)
    assert Perplexity(shift=True)(uniform, torch.tensor([[1, 2, 3]])).item() == pytest.approx(6.0)


def test_zero_shot_accuracy():
    classes = torch.eye(3)
    image = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.7, 0.2], [0.5, 0.4, 0.1]])
    target = torch.tensor([0, 2, 0, 0])
    assert ZeroShotAccuracy()(image, classes, target).item() == pytest.approx(0.75)
    per_sample = classes.expand(4, 3, 3)
    assert ZeroShotAccuracy()(image, per_sample, target).item() == pytest.approx(0.75)
    images, texts = torch.eye(4), torch.eye(4)
    images[3] = torch.tensor([0.6, 0.0, 0.0, 0.4])  # closer to text 0 than to its own text 3
    assert ZeroShotAccuracy()(images, texts).item() == pytest.approx(0.75)

"""Per-batch generators: random keys made on the CPU from a collated batch (masks, prefix lengths,
mixed images).

A generator is called as `gen(<input ports>, rng=generator)`; `rng` is a `torch.Generator` the
loader seeds from (seed, rank, epoch, step), so every batch's randomness is reproducible and a
resumed run draws exactly what the uninterrupted run would have. Generators never touch torch's
global random state.

Evaluation loaders (every source but `train`) skip generators marked `train_only`, and use
`gen.for_eval()` in place of a generator that defines it (e.g. a fixed prefix length instead of a
random one, as AIM evaluates with full attention).
"""

from __future__ import annotations

import torch

from l3m.registry import register


@register("generator")
class RandomPrefixLength:
    """A prefix length per sample, uniform in [low, high] (both inclusive): long [B].

    For prefix-causal attention (AIM): the first `prefix_len` tokens attend bidirectionally.
    The input (an image or tokens) only sets the batch size. With `eval_len`, evaluation loaders
    give every sample that prefix length instead: the number of tokens means full attention (the
    original AIM's `force_full_attn` in its eval generators); without it they draw as in training.
    """

    outputs = ("prefix_len",)
    shapes = "x: [B, ...] -> prefix_len: long[B] < high + 1"

    def __init__(self, high: int, low: int = 1, eval_len: int | None = None) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low <= high, got low = {low}, high = {high}")
        if eval_len is not None and eval_len < 0:
            raise ValueError(f"eval_len must be non-negative, got {eval_len}")
        self.low, self.high, self.eval_len = low, high, eval_len

    def __call__(self, x: torch.Tensor, *, rng: torch.Generator) -> torch.Tensor:
        return torch.randint(self.low, self.high + 1, (x.shape[0],), generator=rng)

    def for_eval(self) -> RandomPrefixLength | FixedPrefixLength:
        return self if self.eval_len is None else FixedPrefixLength(self.eval_len)


class FixedPrefixLength:
    """The same prefix length for every sample: long [B] (RandomPrefixLength's evaluation form)."""

    outputs = ("prefix_len",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, x: torch.Tensor, *, rng: torch.Generator) -> torch.Tensor:
        return torch.full((x.shape[0],), self.length, dtype=torch.long)


@register("generator")
class RandomMask:
    """A random token mask per sample, True = masked: bool [B, num_tokens].

    Exactly `round(ratio * num_tokens)` tokens are masked in every sample (as in MAE), so the
    visible tokens of a batch form a rectangular tensor. The input only sets the batch size.
    The optional second output `visible` is long [B, V], the visible tokens' indices in increasing
    order (V = num_tokens - round(ratio * num_tokens)): `KeepVisible` gathers with it without reading
    the mask's values (no host sync; one graph under torch.compile).
    """

    outputs = ("mask", "visible?")
    shapes = "@random_mask"

    def __init__(self, num_tokens: int, ratio: float = 0.75) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        self.num_tokens, self.ratio = num_tokens, ratio

    def __call__(self, x: torch.Tensor, *, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = x.shape[0], self.num_tokens
        k = int(round(self.ratio * n))
        order = torch.rand(b, n, generator=rng).argsort(dim=1)
        mask = torch.zeros(b, n, dtype=torch.bool)
        mask.scatter_(1, order[:, :k], True)
        return mask, order[:, k:].sort(dim=1).values


@register("generator")
class MixupCutmix:
    """Mixup or CutMix over a batch, with label smoothing: image [B, C, H, W], label [B] -> mixed
    image and soft labels float [B, num_classes].

    With probability `prob` the batch is mixed with its reverse (sample i with sample B-1-i):
    CutMix with probability `switch_prob` (when both alphas are positive), else Mixup; the mixing
    weight is drawn from Beta(alpha, alpha) and, for CutMix, corrected to the pasted box's area.
    Unmixed batches still get smoothed one-hot labels, so the label's shape never changes.
    Already-soft labels [B, num_classes] are mixed as they are.
    """

    outputs = ("image", "label")
    shapes = "image: float[B, C, H, W], label: [B, ...] < num_classes -> image: float[B, C, H, W]"
    train_only = True  # an augmentation: evaluation loaders skip it

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be non-negative (0 disables one)")
        for name, p in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    def soft_labels(self, label: torch.Tensor) -> torch.Tensor:
        if label.dim() == 2:
            return label.float()
        off = self.label_smoothing / self.num_classes
        out = torch.full((label.shape[0], self.num_classes), off)
        return out.scatter_(1, label.long().view(-1, 1), 1.0 - self.label_smoothing + off)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, *, rng: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        target = self.soft_labels(label)
        # Beta draws need numpy; its generator is seeded from `rng`, so `rng` stays the only source.
        npr = np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))
        enabled = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        if not enabled or npr.random() >= self.prob:
            return image, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or npr.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(npr.beta(alpha, alpha))
        flipped = image.flip(0)
        if use_cutmix:
            h, w = image.shape[-2:]
            cut = (1.0 - lam) ** 0.5
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(npr.integers(h)), int(npr.integers(w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            image = image.clone()
            image[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            image = image * lam + flipped * (1.0 - lam)
        return image, target * lam + target.flip(0) * (1.0 - lam)

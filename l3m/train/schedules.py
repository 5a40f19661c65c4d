"""Learning-rate schedules a `.l3m` file can name.

Each entry is a factory `Name(optimizer, total_steps, **args)` returning a `LambdaLR`; the
trainer passes the first two (never written in a file) and calls `step()` after every optimizer
step. The factor multiplies each group's own learning rate, so per-group scales survive.

`warmup` below 1 is a fraction of `total_steps`, otherwise a number of steps. During warmup the
factor rises linearly, `(step + 1) / warmup_steps`, reaching 1 at the last warmup step (never 0,
so no step is wasted). The factors are small callable objects, so `LambdaLR.state_dict()` keeps
them and a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from l3m.registry import register


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` as a step count (a fraction of `total_steps` below 1)."""
    if warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {warmup}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    if steps > total_steps:
        raise ValueError(f"warmup of {steps} steps is longer than the {total_steps} training steps")
    return steps


def _check_ratio(min_lr_ratio: float) -> None:
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


@dataclass
class Factor:
    """The learning-rate factor at a step: linear warmup, then `shape` after it."""

    shape: str  # "cosine", "linear", "constant" or "inverse_sqrt"
    warmup: int
    total: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.shape == "constant":
            return 1.0
        if self.shape == "inverse_sqrt":
            return min(1.0, math.sqrt(max(self.warmup, 1) / (step + 1)))
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.shape == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * decay


@register("schedule")
def WarmupCosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then a cosine from 1 down to `min_lr_ratio` at `total_steps`."""
    _check_ratio(min_lr_ratio)
    return LambdaLR(optimizer, Factor("cosine", warmup_steps(warmup, total_steps), total_steps, min_lr_ratio))


@register("schedule")
def WarmupLinear(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then a straight line from 1 down to `min_lr_ratio` at `total_steps`."""
    _check_ratio(min_lr_ratio)
    return LambdaLR(optimizer, Factor("linear", warmup_steps(warmup, total_steps), total_steps, min_lr_ratio))


@register("schedule")
def Constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0) -> LambdaLR:
    """Linear warmup, then the optimizer's own learning rate throughout."""
    return LambdaLR(optimizer, Factor("constant", warmup_steps(warmup, total_steps), total_steps))


@register("schedule")
def InverseSqrt(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0) -> LambdaLR:
    """Linear warmup, then `sqrt(warmup_steps / (step + 1))` (from step 0 when there is no warmup)."""
    return LambdaLR(optimizer, Factor("inverse_sqrt", warmup_steps(warmup, total_steps), total_steps))


@dataclass
class FromToFactor:
    """fvcore's "linear then cosine" composite, as a factor of the optimizer's peak learning rate.

    At step i of T (the value the optimizer uses for step i, i = 0 first) with W warmup steps:
    `start + (peak - start) * i / W` while i < W, then `end + (peak - end) * (1 + cos(pi * (i - W)
    / (T - W))) / 2`. Step 0 therefore uses `start` exactly and the last step stays just above
    `end`, as in a `CompositeParamScheduler` of a `LinearParamScheduler` and a
    `CosineParamScheduler` queried at `where = i / T` with rescaled intervals.
    """

    warmup: float  # W, in steps (may be fractional when given as a fraction of T)
    total: int
    peak: float
    start: float
    end: float

    def __call__(self, step: int) -> float:
        if step < self.warmup - 1e-6 * self.total:  # fvcore switches phase a hair early (WHERE_EPSILON)
            value = self.start + (self.peak - self.start) * step / self.warmup
        else:
            span = max(self.total - self.warmup, 1e-12)
            progress = min(1.0, (step - self.warmup) / span)
            value = self.end + 0.5 * (self.peak - self.end) * (1.0 + math.cos(math.pi * max(progress, 0.0)))
        return value / self.peak


@register("schedule")
def LinearCosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup: float = 0.0,
    start_lr: float = 0.0,
    end_lr: float = 0.0,
) -> LambdaLR:
    """Linear from `start_lr` to the optimizer's `lr` over `warmup` steps (a fraction of
    `total_steps` below 1), then a cosine down to `end_lr` (absolute learning rates; groups with a
    learning-rate scale get the same curve scaled). See `FromToFactor` for the exact values."""
    peak = float(optimizer.defaults["lr"])
    if peak <= 0:
        raise ValueError(f"LinearCosine needs a positive optimizer lr, got {peak}")
    if start_lr < 0 or end_lr < 0:
        raise ValueError(f"start_lr and end_lr must be non-negative, got {start_lr} and {end_lr}")
    if warmup < 0 or total_steps < 1:
        raise ValueError(f"need warmup >= 0 and total_steps >= 1, got {warmup} and {total_steps}")
    steps = warmup * total_steps if warmup < 1 else float(warmup)
    if steps > total_steps:
        raise ValueError(f"warmup of {steps:g} steps is longer than the {total_steps} training steps")
    return LambdaLR(optimizer, FromToFactor(steps, total_steps, peak, start_lr, end_lr))

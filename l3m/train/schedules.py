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

"""Convolutional blocks for images `[B, C, H, W]`: convolution, batch/group norm, pooling.

Every block here keeps the channels in dim 1 (PyTorch's layout, what image sources emit). The
norms compute in float32 and cast back, so they work unchanged under bf16 training and FSDP2's
mixed precision (whose bf16 weights would otherwise meet float32 running statistics).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from l3m.model.init import init_weight_
from l3m.registry import register

ConvInit = Literal["kaiming_normal", "pytorch", "xavier_uniform", "trunc_normal", "normal"]
Pair = int | list[int]


def _pair(v: Pair, what: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{what} must be an int or [height, width], not {v!r}")


@register("block")
class Conv2d(nn.Conv2d):
    """A 2-D convolution: `[B, in_channels, H, W] -> [B, out_channels, H', W']` (padding may be "same").

    `kernel`, `stride`, `padding` and `dilation` are an int or `[height, width]`; `padding = same`
    keeps H and W (stride 1 only). `init`: "kaiming_normal" (He, fan-out, for ReLU nets: ResNet's),
    "pytorch" (nn.Conv2d's default), or a style of l3m.model.init applied to the kernel as a linear
    map of its `in_channels / groups x kh x kw` inputs. `share` names another block whose
    parameters this one uses instead of its own (same class and shapes; see l3m.model.sharing).
    """

    outputs = ("x",)
    shapes = "@conv2d"  # x [B, in_channels, H, W] -> [B, out_channels, H', W'], the kernel must fit
    checks = (
        ("in_channels >= 1 and out_channels >= 1", "in_channels and out_channels must be at least 1"),
        ("groups >= 1 and in_channels % groups == 0", "groups ({groups}) must divide in_channels ({in_channels})"),
        ("groups >= 1 and out_channels % groups == 0", "groups ({groups}) must divide out_channels ({out_channels})"),
        ("padding != 'same' or stride in [1, [1, 1]]",
         "padding = same needs stride 1 (got {stride}); give the padding as a number"),
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Pair = 3,
        stride: Pair = 1,
        padding: Pair | Literal["same", "valid"] = 0,
        dilation: Pair = 1,
        groups: int = 1,
        bias: bool = True,
        init: ConvInit = "kaiming_normal",
        init_std: float = 0.02,
        share: str = "",
    ):
        pad = padding if isinstance(padding, str) else _pair(padding, "padding")
        super().__init__(in_channels, out_channels, _pair(kernel, "kernel"), stride=_pair(stride, "stride"),
                         padding=pad, dilation=_pair(dilation, "dilation"), groups=groups, bias=bias)
        if init not in ConvInit.__args__:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(ConvInit.__args__)}")
        self.init, self.init_std, self.share = init, init_std, share
        self.init_weights()

    def reset_parameters(self) -> None:  # nn.Conv2d's constructor calls it; init_weights does the work
        pass

    def init_weights(self) -> None:
        fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
        w = self.weight
        with torch.no_grad():
            if self.init == "kaiming_normal":
                fan_out = self.out_channels // self.groups * math.prod(self.kernel_size)
                w.normal_(0.0, math.sqrt(2.0 / fan_out))
            elif self.init == "xavier_uniform":  # the kernel as a [out, in*kh*kw] linear map
                bound = math.sqrt(6.0 / (fan_in + self.out_channels))
                w.uniform_(-bound, bound)
            else:
                init_weight_(w, self.init, std=self.init_std, fan_in=fan_in)
            if self.bias is not None:
                if self.init == "pytorch":
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    self.bias.uniform_(-bound, bound)
                else:
                    self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)


def _batch_moments(x: torch.Tensor, reduce) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of `x` (float32) over every dim but 1, and the count,
    with the sums passed through `reduce` (an all-reduce across ranks, differentiable) first."""
    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    count = x.new_tensor([x.numel() // max(c, 1)], dtype=torch.float32)
    stats = reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
    return mean, var, n


class _WorldSum(torch.autograd.Function):
    """A sum over every rank of the default group; the gradient of each rank's input is the sum of
    every rank's output gradient (each rank's loss depends on every rank's sums)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def _world_sum(t: torch.Tensor) -> torch.Tensor:
    return _WorldSum.apply(t)


def _synced() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@register("block")
class BatchNorm(nn.Module):
    """Batch normalisation of `[B, channels, ...]` over the batch and every dim after the channels.

    Training normalises with the batch's statistics and updates running averages (`momentum`);
    evaluation uses the running averages. Under data parallelism each rank normalises with its own
    micro-batch's statistics and keeps its own running averages (a checkpoint stores one rank's)
    unless `sync = true`: then the sums are all-reduced over every rank (SyncBatchNorm's semantics;
    tensor/context-parallel peers hold the same samples, which leaves mean and variance unchanged),
    so every rank uses and keeps the global batch's statistics. Computed in float32.
    """

    outputs = ("x",)
    shapes = "x: float[B, channels, ...] -> x: float[B, channels, ...]"
    checks = (("channels >= 1", "channels ({channels}) must be at least 1"),
              ("0 <= momentum <= 1", "momentum ({momentum}) must be between 0 and 1"))

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 sync: bool = False, share: str = ""):
        super().__init__()
        self.channels, self.eps, self.momentum, self.sync, self.share = channels, eps, momentum, sync, share
        self.weight = nn.Parameter(torch.empty(channels)) if affine else None
        self.bias = nn.Parameter(torch.empty(channels)) if affine else None
        self.register_buffer("running_mean", torch.empty(channels))
        self.register_buffer("running_var", torch.empty(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
                self.bias.zero_()
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm(channels={self.channels}) got x of shape {tuple(x.shape)}: "
                             f"dim 1 must hold the {self.channels} channels")
        xf = x.float()
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        if self.training and self.sync and _synced():
            return self._sync_forward(xf, w, b).to(x.dtype)
        if self.training:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(xf, self.running_mean, self.running_var, w, b, training=self.training,
                         momentum=self.momentum, eps=self.eps)
        return y.to(x.dtype)

    def _sync_forward(self, x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
        mean, var, n = _batch_moments(x, _world_sum)
        with torch.no_grad():
            unbiased = var * (n / (n - 1).clamp_min(1.0))
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
            self.num_batches_tracked.add_(1)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if w is not None:
            y = y * w.view(shape) + b.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, momentum={self.momentum}, sync={self.sync}"


@register("block")
class GroupNorm(nn.Module):
    """Group normalisation of `[B, channels, ...]`: per sample, over `groups` groups of channels.

    No batch statistics, so it behaves alike in training, evaluation and under data parallelism.
    Computed in float32."""

    outputs = ("x",)
    shapes = "x: float[B, channels, ...] -> x: float[B, channels, ...]"
    checks = (("groups >= 1 and channels % groups == 0", "groups ({groups}) must divide channels ({channels})"),)

    def __init__(self, groups: int, channels: int, eps: float = 1e-5, affine: bool = True, share: str = ""):
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"groups ({groups}) must divide channels ({channels})")
        self.groups, self.channels, self.eps, self.share = groups, channels, eps, share
        self.weight = nn.Parameter(torch.empty(channels)) if affine else None
        self.bias = nn.Parameter(torch.empty(channels)) if affine else None
        self.init_weights()

    def init_weights(self) -> None:
        if self.weight is not None:
            with torch.no_grad():
                self.weight.fill_(1.0)
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.groups, w, b, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.groups}, {self.channels}, eps={self.eps}"


class _Pool2d(nn.Module):
    outputs = ("x",)
    shapes = "@pool2d"  # x [B, C, H, W] -> [B, C, H', W'], the window must fit

    def __init__(self, kernel: Pair = 2, stride: Pair | None = None, padding: Pair = 0):
        super().__init__()
        self.kernel = _pair(kernel, "kernel")
        self.stride = _pair(stride, "stride") if stride is not None else self.kernel
        self.padding = _pair(padding, "padding")
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"padding {padding} must be at most half the window {kernel}")

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


@register("block")
class MaxPool2d(_Pool2d):
    """The maximum over `kernel` windows: `[B, C, H, W] -> [B, C, H', W']` (stride defaults to the window)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)


@register("block")
class AvgPool2d(_Pool2d):
    """The mean over `kernel` windows: `[B, C, H, W] -> [B, C, H', W']` (stride defaults to the window).

    Zero padding counts in the mean, as in nn.AvgPool2d's default."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding)


@register("block")
class GlobalAvgPool(nn.Module):
    """The mean over every position: `[B, C, H, W] -> [B, C]` (any number of dims after C)."""

    outputs = ("x",)
    shapes = "x: float[B, C, ...] -> x: float[B, C]"

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=-1)

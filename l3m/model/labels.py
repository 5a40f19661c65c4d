"""A check that class labels fit the logits they index, before a loss indexes with them.

Out of range, `F.cross_entropy` raises a bare `IndexError` on the CPU and a device-side assert on a
GPU (which also wrecks the CUDA context, so nothing after it can be reported). The check reads the
smallest and largest label: on the CPU every call (a few elementwise ops beside the loss), on an
accelerator the first `GPU_CHECKS` calls in each mode (training, evaluation) only, since reading the
result back waits for the device. Inside a `torch.compile`d region it is skipped (reading a value back
would break the graph into pieces); eager calls, evaluation and the first uncompiled steps still check.
"""

from __future__ import annotations

import torch
from torch import nn

GPU_CHECKS = 8


class LabelRangeError(ValueError):
    """A label outside `[0, classes)` (and not the ignored index) reached a loss or metric."""

    def __init__(self, label: int, classes: int, port: str, logits_port: str, ignore_index: int | None) -> None:
        self.label, self.classes, self.port, self.logits_port = label, classes, port, logits_port
        self.ignore_index = ignore_index
        super().__init__(f"'{port}' holds label {label}, but '{logits_port}' has {classes} classes")


def check_labels(module: nn.Module, target: torch.Tensor, classes: int, *, port: str = "target",
                 logits_port: str = "logits", ignore_index: int | None = None) -> None:
    """Raise `LabelRangeError` when an index target lies outside `[0, classes)` (see the module doc)."""
    if target.is_floating_point() or target.numel() == 0:
        return
    if torch.compiler.is_compiling():  # reading the labels back would break the graph; eager steps check
        return
    if target.device.type not in ("cpu", "meta"):
        counts = module.__dict__.setdefault("_label_checks", {})
        done = counts.get(module.training, 0)
        if done >= GPU_CHECKS:
            return
        counts[module.training] = done + 1
    elif target.device.type == "meta":
        return
    t = target.detach()
    if hasattr(t, "to_local"):
        t = t.to_local()
    if ignore_index is not None:
        t = t[t != ignore_index]
        if t.numel() == 0:
            return
    low, high = (int(v) for v in torch.stack([t.min(), t.max()]).tolist())
    if low < 0:
        raise LabelRangeError(low, classes, port, logits_port, ignore_index)
    if high >= classes:
        raise LabelRangeError(high, classes, port, logits_port, ignore_index)

"""Named tensor-parallel styles (`l3m.traits.TP_STYLES`) as torch's `ParallelStyle` objects, so that a
block can declare its plan as plain data (`tp_plan = {"w1": "colwise", "w2": "rowwise"}`)."""

from __future__ import annotations

from typing import Any

from l3m.traits import TP_STYLES


def parallel_style(style: Any, where: str) -> Any:
    """`style` as a ParallelStyle (one given as an object passes unchanged); `where` names the module in errors."""
    if not isinstance(style, str):
        return style
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if style == "colwise":
        return ColwiseParallel()
    if style == "rowwise":
        return RowwiseParallel()
    if style == "colwise_gather":
        return ColwiseParallel(output_layouts=Replicate())
    if style == "rowwise_embedding":
        return RowwiseParallel(input_layouts=Replicate())
    raise ValueError(f"{where}: unknown tensor-parallel style {style!r}; expected one of {', '.join(TP_STYLES)}")

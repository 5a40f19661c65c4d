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
        return _embedding_rowwise()(input_layouts=Replicate())
    raise ValueError(f"{where}: unknown tensor-parallel style {style!r}; expected one of {', '.join(TP_STYLES)}")


def _embedding_rowwise() -> type:
    """RowwiseParallel for an embedding table whose output is handed on as a tensor of its own.

    `to_local()` gives a view of the summed output's local tensor (or an async-collective wrapper of
    it); a compiled layer that takes such a tensor as its input sends its gradient back to the
    wrong place (torch 2.14: an AttributeError in the redistribution's backward). One copy of the
    `[B, N, dim]` output per step avoids it.
    """
    from torch.distributed.tensor.parallel import RowwiseParallel

    class EmbeddingRowwise(RowwiseParallel):
        @staticmethod
        def _prepare_output_fn(output_layouts: Any, use_local_output: bool, mod: Any, outputs: Any,
                               device_mesh: Any) -> Any:
            out = RowwiseParallel._prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh)
            return out.clone() if use_local_output else out

    return EmbeddingRowwise

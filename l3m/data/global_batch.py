"""The global batch: how one optimizer step's samples are spread over ranks and micro-batches.

A training source's `batch_size` is the *global* batch: the samples of one optimizer step over
every data-parallel rank. Each of the `dp = dp_replicate × dp_shard` ranks (tensor- and
context-parallel peers read the same samples) draws `accum` micro-batches of `micro` samples:

    global = micro × dp × accum

The file fixes the global batch and either `train.grad_accum` (default 1; the micro-batch is
derived) or `train.micro_batch` (the accumulation is derived); when it sets both they must
agree. So one file means the same optimization on any number of ranks; only the split changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # l3m.dsl's checker imports this module
    from l3m.dsl.ir import Node, Program, Span

TRAIN_SOURCE = "train"
_MISSING = object()


@dataclass(frozen=True)
class BatchLayout:
    global_batch: int  # samples per optimizer step, all ranks together
    dp: int  # data-parallel ranks (ranks that read different samples)
    micro: int  # samples per micro-batch on one rank
    accum: int  # micro-batches per optimizer step on one rank

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.micro} per micro-batch × {self.dp} data-parallel "
                f"rank(s) × {self.accum} accumulation step(s)")


def derive_layout(global_batch: int, dp: int, grad_accum: int | None = None,
                  micro_batch: int | None = None) -> BatchLayout:
    """The micro-batch and accumulation for `global_batch` over `dp` ranks; ValueError if they
    cannot divide it. `None` (or 0) means the file left that setting out."""
    g = int(global_batch)
    if g < 1:
        raise ValueError(f"the global batch must be at least 1, got {g}")
    if grad_accum is not None and grad_accum < 1:
        raise ValueError(f"train.grad_accum must be at least 1, got {grad_accum}")
    if micro_batch is not None and micro_batch < 0:
        raise ValueError(f"train.micro_batch must be positive (or 0: derived), got {micro_batch}")
    micro_batch = micro_batch or None
    if micro_batch is None:
        accum = grad_accum or 1
        if g % (dp * accum):
            raise ValueError(
                f"the global batch {g} does not split over {dp} data-parallel rank(s) × {accum} accumulation "
                f"step(s): it is not a multiple of {dp * accum}")
        return BatchLayout(g, dp, g // (dp * accum), accum)
    if g % (dp * micro_batch):
        raise ValueError(
            f"the global batch {g} is not a whole number of micro-batches of {micro_batch} on {dp} data-parallel "
            f"rank(s): it is not a multiple of {dp * micro_batch}")
    accum = g // (dp * micro_batch)
    if grad_accum is not None and grad_accum != accum:
        raise ValueError(
            f"train.micro_batch = {micro_batch} and train.grad_accum = {grad_accum} disagree: on {dp} data-parallel "
            f"rank(s) they make a global batch of {micro_batch * dp * grad_accum}, not {g}")
    return BatchLayout(g, dp, micro_batch, accum)


def source_batch_size(node: Node) -> tuple[int | None, Span]:
    """A source node's `batch_size` as the file gives it (or the class default), and where."""
    from l3m.registry import lookup

    span = node.call.kwarg_spans.get("batch_size", node.call.type_span)
    entry = lookup(node.call.type_name)
    if entry is None:
        return None, span
    try:
        sig = entry.signature
        value: Any = node.call.kwargs_for(sig).get("batch_size", _MISSING)
        if value is _MISSING:
            param = sig.parameters.get("batch_size")
            value = param.default if param is not None else None
    except (TypeError, ValueError):
        return None, span
    return (value if isinstance(value, int) and not isinstance(value, bool) else None), span


def train_settings(program: Program) -> tuple[int | None, int | None]:
    """`(train.grad_accum, train.micro_batch)` as the file sets them (None: left out)."""
    values = program.section("train")
    accum, micro = values.get("grad_accum"), values.get("micro_batch")
    return (int(accum) if accum is not None else None), (int(micro) if micro else None)


def program_layout(program: Program, dp: int) -> BatchLayout | None:
    """The training layout of a program on `dp` data-parallel ranks (None: no train source or
    its batch size is not known before it is built); ValueError when it does not divide."""
    node = next((n for n in program.of_role("source") if n.name == TRAIN_SOURCE), None)
    if node is None:
        return None
    g, _ = source_batch_size(node)
    if g is None:
        return None
    accum, micro = train_settings(program)
    return derive_layout(g, dp, accum, micro)

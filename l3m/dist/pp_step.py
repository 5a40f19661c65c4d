"""One optimizer step of a pipelined model (the trainer's `train_step` under `mesh.pp > 1`).

Every pipeline rank draws the step's `grad_accum` micro-batches (so the loaders stay in step and the
first stage has its inputs, the last its targets); the schedule runs their forwards and backwards;
the last stage's loss records are sent to every pipeline rank, so logging, the non-finite checks and
the gradient norm (clipped over all stages' parameters together) are what one process computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from l3m.dist.grads import clip_grad_norm_
from l3m.dist.pp import Pipeline, broadcast_logs
from l3m.train import perf
from l3m.train.engine import add_micro_batch

if TYPE_CHECKING:
    from l3m.train.engine import StepStats, Trainer


def pipeline_step(trainer: Trainer, pipe: Pipeline) -> StepStats:
    from l3m.train.engine import StepStats, optimizer_step, to_device

    s, cfg = trainer.s, trainer.cfg
    accum = max(1, cfg.grad_accum)
    keys = s.input_keys
    batches: list[dict[str, Any]] = []
    samples = tokens = 0
    for _ in range(accum):
        batch = next(s.train_loader)
        samples += perf.batch_size(batch, keys)
        tokens += perf.count_tokens(batch, keys)
        batches.append(to_device(batch, s.device))
    if pipe.schedule is None:
        pipe.bind(s.criterion, accum, s.device)
        trainer.ckpt.pipeline_group = pipe.dims.group("pp")  # checkpoints merge the stages' skeletons
        trainer.ckpt.parameter_order = pipe.parameter_order
    with s.precision.autocast():
        records = pipe.step(batches)
    payload = None
    if pipe.has_last:
        sums: dict[str, torch.Tensor] = {}
        reduced: dict[str, torch.Tensor] = {}
        for total, logs, stats in records:
            add_micro_batch(sums, reduced, total, logs, stats)
        payload = ({k: v.cpu() for k, v in sums.items()}, {k: v.cpu() for k, v in reduced.items()})
    sums, reduced = broadcast_logs(pipe, payload)
    sums = {k: v.to(s.device) for k, v in sums.items()}
    reduced = {k: v.to(s.device) for k, v in reduced.items()}
    grad_norm = None
    if cfg.grad_clip > 0:
        params = [p for _, p in s.named_parameters() if p.grad is not None]
        grad_norm = clip_grad_norm_(params, cfg.grad_clip, pp=pipe.dims.pp)
    optimizer_step(s)
    return StepStats({k: v / accum for k, v in sums.items()}, grad_norm, samples, tokens, reduced)

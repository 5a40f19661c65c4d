"""An exponential moving average (EMA) of the trainable weights (`train { ema = 0.9999 }`).

After each optimizer step `t` (1, 2, ...): before `ema_start` the average follows the weights
(`ema = w`); from `ema_start` on, `ema = decay × ema + (1 - decay) × w`. It starts as the weights
the run starts from. Averages are float32 (a bf16 average of decay 0.9999 would never move).

Under FSDP2 a parameter is a DTensor and this rank holds one shard of it: the average holds the
same shard (a plain tensor on the parameter's device, or on the CPU with `ema_device = "cpu"`),
and `state_dict` wraps each shard as a DTensor with the parameter's mesh and placements, so DCP
saves and reloads it resharded like the parameter itself. Checkpoints hold it under `ema/<name>`
(the names of `Session.named_parameters`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") else t


class WeightsEMA:
    """The averages of `params` (name -> parameter), those that train (`requires_grad`)."""

    def __init__(self, params: list[tuple[str, nn.Parameter]], decay: float, start: int = 0,
                 device: str = "same") -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"train.ema is a decay from 0 up to 1 (excluded), not {decay}")
        self.decay, self.start, self.on_cpu = float(decay), int(start), device == "cpu"
        self.params = {n: p for n, p in params if p.requires_grad}
        self.shadow: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, p in self.params.items():
                local = _local(p)
                self.shadow[n] = local.to("cpu" if self.on_cpu else local.device, torch.float32, copy=True)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After the optimizer step that ended `step`."""
        names = list(self.shadow)
        if not names:
            return
        avg = [self.shadow[n] for n in names]
        cur = [_local(self.params[n]).to(avg[i].device, torch.float32) for i, n in enumerate(names)]
        if step < self.start:
            torch._foreach_copy_(avg, cur)
        else:
            torch._foreach_lerp_(avg, cur, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages to checkpoint: DTensors shaped like their parameters when these are."""
        out = {}
        for n, t in self.shadow.items():
            p = self.params[n]
            if hasattr(p, "device_mesh"):
                from torch.distributed.tensor import DTensor

                t = DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                       stride=p.stride())
            out[n] = t
        return out

    @torch.no_grad()
    def load(self, loaded: Mapping[str, torch.Tensor]) -> list[str]:
        """Take the averages of a checkpoint (as `state_dict` named them); the names it lacks
        (they keep the current weights)."""
        for n, t in loaded.items():
            if n in self.shadow:
                src = _local(t)
                if src.data_ptr() != self.shadow[n].data_ptr():
                    self.shadow[n].copy_(src)
        return [n for n in self.shadow if n not in loaded]

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (evaluation), the trained ones after."""
        kept = {}
        with torch.no_grad():
            for n, p in self.params.items():
                local = _local(p)
                kept[n] = local.clone()
                local.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    _local(p).copy_(kept[n])


def load_averages(session, path, skeleton: Mapping) -> int:
    """Put a checkpoint's weight averages (`ema/<name>`) into `session`'s trainable parameters, in
    place (shard by shard under FSDP2), for `l3m eval` with `train.eval_ema`; how many were loaded.
    A checkpoint without averages is a `ValueError`."""
    from l3m.train.checkpoint import load_tensors, tensor_keys

    saved = skeleton.get("ema") if isinstance(skeleton, Mapping) else None
    available = set(tensor_keys(saved)) if isinstance(saved, Mapping) else set()
    if not available:
        raise ValueError(f"checkpoint {path} holds no weight averages: train.eval_ema needs a run trained "
                         "with train.ema (or evaluate with train.eval_ema=false)")
    live = {f"ema/{n}": p.detach() for n, p in session.named_parameters() if f"ema/{n}" in available}
    with torch.no_grad():
        load_tensors(path, list(live), live)
    return len(live)


def with_averages(path, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's model `weights` (full tensors by name) with each trained one replaced by its
    average (`l3m export --ema`). A tied weight, saved under several names with equal values,
    takes the average under every name. A checkpoint without averages is a `ValueError`."""
    from l3m.train.checkpoint import load_model_tensors

    try:
        averages = load_model_tensors(path, prefix="ema/")
    except KeyError:
        raise ValueError(f"checkpoint {path} holds no weight averages (it was trained without train.ema)") from None
    out = dict(weights)
    for name, avg in averages.items():
        if name not in weights:  # a learnable loss parameter (`criterion.`): not part of the model
            continue
        trained = weights[name]
        for k, t in weights.items():  # the other names of a tied weight hold the same values
            if k == name or (k not in averages and t.shape == trained.shape and torch.equal(t, trained)):
                out[k] = avg.to(t.dtype)
    return out

"""The training loop: steps, gradient accumulation, logging, evaluation and checkpoints.

One optimizer step runs `grad_accum` micro-batches; the loss of each is divided by
`grad_accum`, so accumulation of k batches of b samples matches one batch of k*b. Under FSDP,
gradients are synchronised only on the last micro-batch (`set_requires_gradient_sync`).

Non-finite losses are tracked on the device without a host sync (the first step at which each
loss term went bad) and checked at every log, evaluation and checkpoint, and at the end: the run
stops with the step and the term's name, and a checkpoint is never written after it. Before a
checkpoint the parameters themselves are checked too.

Evaluation runs on every data source other than `train`, in eval mode under `torch.no_grad`
with the training autocast; results are sample-weighted means over all ranks, and the wrap-around
samples that even out the ranks' shards are left out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict, set_state_dict

from l3m.data.loader import VALID_KEY, StatefulLoader
from l3m.train import perf
from l3m.train.checkpoint import (
    CheckpointManager,
    Found,
    join_state,
    load_tensors,
    read_rank_state,
    read_state,
    rng_state,
    set_rng_state,
    split_state,
    tensor_keys,
)
from l3m.train.logging import MetricsFile, RunLogger
from l3m.train.safe_dcp import UnsafeCheckpoint
from l3m.train.session import Session


class CheckpointMismatch(ValueError):
    """A whole, verified checkpoint that cannot be loaded into this program's objects."""


class NonFiniteError(RuntimeError):
    """A loss term (or the parameters) stopped being finite."""

    def __init__(self, step: int, term: str, message: str) -> None:
        self.step, self.term = step, term
        super().__init__(message)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _valid_subset(d: Mapping[str, Any], valid: torch.Tensor) -> dict[str, Any]:
    """Keep the valid samples of every batch-first tensor (leading dimension = batch size)."""
    b = valid.shape[0]
    idx = valid.nonzero().squeeze(1)
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b:
            out[k] = v.index_select(0, idx.to(v.device))
        else:
            out[k] = v
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor, detached."""
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") else t


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.SUM)


@torch.no_grad()
def evaluate(s: Session, loaders: Mapping[str, StatefulLoader] | None = None, max_batches: int = 0) -> dict[str, dict]:
    """`{source: {"loss", <terms>, <metrics>, "samples"}}`, each a sample-weighted mean over ranks."""
    loaders = s.eval_loaders if loaders is None else loaders
    s.model.eval()
    s.criterion.eval()
    results: dict[str, dict] = {}
    try:
        for name, loader in loaders.items():
            sums: dict[str, torch.Tensor] = {}
            count = torch.zeros((), dtype=torch.float64, device=s.device)
            for i, batch in enumerate(loader.iter_epoch_once()):
                if max_batches and i >= max_batches:
                    break
                valid = batch.pop(VALID_KEY)
                batch = to_device(batch, s.device)
                with s.precision.autocast():
                    d = s.model(batch)  # every rank runs every batch: sharded models gather in forward
                    n = int(valid.sum())
                    if n == 0:
                        continue
                    if n < valid.shape[0]:
                        d = _valid_subset(d, valid)
                    total, logs = s.criterion(d)
                for k, v in {"loss": total, **logs}.items():
                    if v.dim() == 0:
                        sums[k] = sums.get(k, 0) + v.detach().double() * n
                count += n
            keys = list(sums)  # "loss", then terms and metrics in declaration order (the same on every rank)
            packed = torch.stack([count, *[sums[k] for k in keys]]) if keys else count.reshape(1)
            packed = _all_reduce_sum(packed)
            total_n = float(packed[0])
            res = {k: float(packed[i + 1]) / max(total_n, 1.0) for i, k in enumerate(keys)}
            dims = getattr(s.model, "parallel_dims", None)  # tensor/context-parallel peers see the same samples
            res["samples"] = int(total_n) // (dims.world_size // dims.dp_size if dims is not None else 1)
            results[name] = res
    finally:
        s.model.train()
        s.criterion.train()
    return results


@dataclass
class StepStats:
    logs: dict[str, torch.Tensor]  # "loss", each loss term, each metric: means over micro-batches
    grad_norm: torch.Tensor | None
    samples: int
    tokens: int


class Trainer:
    """Runs a session's training from its current step to `train.steps`."""

    def __init__(self, session: Session, run_dir: Path, logger: RunLogger, ckpt: CheckpointManager) -> None:
        self.s, self.run_dir, self.logger, self.ckpt = session, run_dir, logger, ckpt
        self.cfg = session.train
        self.step = 0
        self.terms = list(session.criterion.weights)  # the loss terms, in declaration order
        self._bad = torch.zeros(len(self.terms) + 1, dtype=torch.long, device=session.device)
        self._flops: float | None | bool = False  # False: not measured yet
        self._window = (time.perf_counter(), 0, 0, 0)  # time, steps, samples, tokens since the last log
        self.last_eval: dict[str, dict] = {}
        self.last_record: dict[str, Any] = {}

    # -- state ------------------------------------------------------------------------------------

    def _model_states(self) -> tuple[dict, dict, dict]:
        model_sd, optim_sd = get_state_dict(self.s.holder, self.s.optimizer)
        split = {"model": {}, "criterion": {}}
        for k, v in model_sd.items():
            root, _, rest = k.partition(".")
            split[root][rest] = v
        return split["model"], split["criterion"], optim_sd

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the state every rank shares, this rank's own state) at the current step."""
        model, criterion, optim = self._model_states()
        shared = {
            "step": self.step,
            "model": model,
            "criterion": criterion,
            "optim": optim,
            "schedule": self.s.scheduler.state_dict() if self.s.scheduler is not None else {},
            "scaler": self.s.precision.state_dict(),
            "loader": self.s.train_loader.state_dict(),
        }
        return shared, {"rank": self.s.runtime.rank, "rng": rng_state()}

    def restore(self, found: Found) -> int:
        """Load a verified checkpoint into the live objects; the step it was taken at.

        A checkpoint that does not fit the program (another model size, other parameter groups)
        raises `CheckpointMismatch` rather than training on from a half-loaded state."""
        try:
            return self._restore(found)
        except UnsafeCheckpoint:
            raise
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointMismatch(
                f"checkpoint {found.path} does not fit this program: {type(e).__name__}: {e}\n"
                "(train into another --output, or pass --no-resume to start afresh)") from e

    def _restore(self, found: Found) -> int:
        saved = read_state(found.path)
        skeleton = saved["state"]
        model, criterion, optim = self._model_states()  # also creates the optimizer's state to load into
        _, live = split_state({"model": model, "criterion": criterion, "optim": optim})
        tensors = load_tensors(found.path, tensor_keys(skeleton), live)
        state = join_state(skeleton, tensors)
        model_sd = {f"model.{k}": v for k, v in state["model"].items()}
        model_sd.update({f"criterion.{k}": v for k, v in state.get("criterion", {}).items()})
        set_state_dict(self.s.holder, self.s.optimizer, model_state_dict=model_sd, optim_state_dict=state["optim"])
        if self.s.scheduler is not None and state.get("schedule"):
            self._load_schedule(dict(state["schedule"]))
        self.s.precision.load_state_dict(state.get("scaler", {}))
        self.s.train_loader.load_state_dict(state["loader"])
        mine = read_rank_state(found.path, self.s.runtime.rank)
        if mine is not None:
            set_rng_state(mine["rng"])
        else:
            self.logger.warning(f"{found.path} has no random state for rank {self.s.runtime.rank}; "
                                "dropout and other random ops will not repeat the original run")
        self.step = int(state["step"])
        return self.step

    def _load_schedule(self, saved: dict[str, Any]) -> None:
        """The schedule's position from the checkpoint, its shape from the program: a run resumed
        with other settings (more `train.steps`) follows the new curve from where it stands."""
        live = self.s.scheduler.state_dict()
        if "lr_lambdas" in saved and saved["lr_lambdas"] != live.get("lr_lambdas"):
            self.logger.warning("the schedule's settings changed since the checkpoint; following the new ones")
            saved["lr_lambdas"] = live["lr_lambdas"]
        self.s.scheduler.load_state_dict(saved)

    def save(self) -> Path:
        self.check_finite(params=True)
        shared, mine = self.state()
        path = self.ckpt.save(self.step, shared, mine)
        self.logger.info(f"saved checkpoint {path}")
        return path

    # -- non-finite values -------------------------------------------------------------------------

    def _track(self, stats: StepStats) -> None:
        values = torch.stack([stats.logs[t].float() for t in self.terms] + [stats.logs["loss"].float()])
        bad = ~torch.isfinite(values)
        self._bad = torch.where((self._bad == 0) & bad, torch.full_like(self._bad, self.step), self._bad)

    def check_finite(self, params: bool = False) -> None:
        """Raise NonFiniteError naming the first step and loss term that went bad (all ranks agree)."""
        never = torch.iinfo(torch.long).max
        first = torch.where(self._bad == 0, torch.full_like(self._bad, never), self._bad)
        first = _all_reduce(first, dist.ReduceOp.MIN)  # the earliest bad step of each term on any rank
        if bool((first != never).any()):
            hit = [(int(first[i]), name) for i, name in enumerate([*self.terms, "loss"]) if int(first[i]) != never]
            step = min(s for s, _ in hit)
            names = [n for s, n in hit if s == step and n != "loss"]
            if names:
                what = "loss term " + " and ".join(f"'{n}'" for n in names) + (" is" if len(names) == 1 else " are")
            else:
                what = "the weighted total 'loss' (of finite terms) is"
            raise NonFiniteError(step, (names or ["loss"])[0],
                                 f"non-finite loss at step {step}: {what} NaN or infinite; stopping without "
                                 "saving (lower the learning rate, enable grad_clip, or check the data)")
        if params:
            flag = torch.zeros((), device=self.s.device)
            for _, p in self.s.named_parameters():
                flag += (~torch.isfinite(_local(p))).any().float()
            if bool(_all_reduce_sum(flag) > 0):
                bad_names = [n for n, p in self.s.named_parameters() if not bool(torch.isfinite(_local(p)).all())]
                raise NonFiniteError(self.step, "parameters",
                                     f"parameters became non-finite by step {self.step} "
                                     f"({', '.join(bad_names[:4]) or 'on another rank'}); stopping without saving")

    # -- one step ----------------------------------------------------------------------------------

    def _set_grad_sync(self, on: bool) -> None:
        fn = getattr(self.s.model, "set_requires_gradient_sync", None)
        if callable(fn):
            fn(on)

    def _sync_grads_fallback(self) -> None:
        """Plain data parallelism when l3m.dist did not wrap the model: average the gradients."""
        if self.s.parallel or not self.s.runtime.distributed:
            return
        world = self.s.runtime.world_size
        for _, p in self.s.named_parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(world)

    def train_step(self) -> StepStats:
        s, accum = self.s, max(1, self.cfg.grad_accum)
        keys = s.input_keys
        sums: dict[str, torch.Tensor] = {}
        samples = tokens = 0
        for micro in range(accum):
            batch = next(s.train_loader)
            samples += perf.batch_size(batch, keys)
            tokens += perf.count_tokens(batch, keys)
            batch = to_device(batch, s.device)
            self._set_grad_sync(micro == accum - 1)
            with s.precision.autocast():
                d = s.model(batch)
                total, logs = s.criterion(d)
            s.precision.scaler.scale(total / accum).backward()
            for k, v in {"loss": total.detach(), **logs}.items():
                if v.dim() == 0:
                    sums[k] = sums.get(k, 0) + v.float()
        self._sync_grads_fallback()
        grad_norm = None
        if self.cfg.grad_clip > 0:
            s.precision.scaler.unscale_(s.optimizer)
            params = [p for _, p in s.named_parameters() if p.grad is not None]
            if s.parallel:  # parameters may be DTensors on several meshes (FSDP x TP)
                from l3m.dist.grads import clip_grad_norm_

                grad_norm = clip_grad_norm_(params, self.cfg.grad_clip)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
        s.precision.scaler.step(s.optimizer)
        s.precision.scaler.update()
        if s.scheduler is not None:
            s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        return StepStats({k: v / accum for k, v in sums.items()}, grad_norm, samples, tokens)

    # -- reporting ---------------------------------------------------------------------------------

    def _flops_per_sample(self) -> float | None:
        if self._flops is False:
            self._flops = None
            try:
                from l3m.plan import plan

                measured = plan(self.s.program, self.s.runtime.world_size,
                                schedule=self.s.compiled.flow.model_order())["flops_per_sample"]
                if measured:
                    self._flops = float(measured["total"])
            except Exception as e:  # noqa: BLE001 - MFU is a nicety; a model the planner cannot run still trains
                self.logger.info(f"no MFU estimate: {type(e).__name__}: {e}")
        return self._flops  # type: ignore[return-value]

    def _lr(self) -> float:
        g = self.s.optimizer.param_groups[0]
        lr = g["lr"]
        lr = float(lr) if not isinstance(lr, torch.Tensor) else float(lr.item())
        scale = g.get("lr_scale") or 1.0
        return lr / scale

    def _log_train(self, stats: StepStats) -> None:
        rt = self.s.runtime
        names = list(stats.logs)  # "loss", then terms and metrics in declaration order
        packed = torch.stack([stats.logs[k].detach().float() for k in names])
        if stats.grad_norm is not None:
            packed = torch.cat([packed, stats.grad_norm.detach().float().reshape(1)])
        packed = _all_reduce_sum(packed) / rt.world_size
        values = packed.tolist()  # the host sync of this log step
        now = time.perf_counter()
        t0, steps, samples, tokens = self._window
        elapsed = max(now - t0, 1e-9)
        self._window = (now, 0, 0, 0)
        dims = getattr(self.s.model, "parallel_dims", None)  # tensor/context-parallel peers share samples
        readers = dims.dp_size if dims is not None else rt.world_size
        sps = samples * readers / elapsed
        record: dict[str, Any] = {"split": "train", "step": self.step, "epoch": self.s.train_loader.epoch}
        record["loss"] = values[names.index("loss")]
        record.update({k: values[i] for i, k in enumerate(names) if k != "loss"})
        record["lr"] = self._lr()
        if stats.grad_norm is not None:
            record["grad_norm"] = values[-1]
        record["samples_per_s"] = sps
        if tokens:
            record["tokens_per_s"] = tokens * readers / elapsed
        if rt.is_main:
            flops = self._flops_per_sample()
            if flops:
                peak = perf.peak_flops(self.s.device, self.s.precision.dtype)
                record["mfu"] = flops * sps / (peak * rt.world_size)
        record["memory_bytes"] = perf.memory_bytes(self.s.device)
        record["step_time_s"] = elapsed / max(steps, 1)
        record["eta_s"] = record["step_time_s"] * (self.cfg.steps - self.step)
        self.last_record = record
        self.logger.log(record)

    def run_eval(self) -> None:
        if not self.s.eval_loaders:
            return
        self.check_finite()
        self.last_eval = evaluate(self.s, max_batches=self.cfg.eval_steps)
        for name, res in self.last_eval.items():
            self.logger.log({"split": name, "step": self.step, **res})

    # -- the loop ------------------------------------------------------------------------------------

    def fit(self) -> None:
        cfg, total = self.cfg, self.cfg.steps
        if self.step >= total:
            self.logger.info(f"already trained for {self.step} of {total} steps; nothing to do")
            return
        self.logger.start(self.step)
        self._window = (time.perf_counter(), 0, 0, 0)
        self.s.model.train()
        self.s.criterion.train()
        while self.step < total:
            self.step += 1
            stats = self.train_step()
            self._track(stats)
            t0, n, smp, tok = self._window
            self._window = (t0, n + 1, smp + stats.samples, tok + stats.tokens)
            last = self.step == total
            self.logger.advance(self.step)
            if last or (cfg.log_every > 0 and self.step % cfg.log_every == 0):
                self.check_finite()
                self._log_train(stats)
            paused = time.perf_counter()
            if last or (cfg.eval_every > 0 and self.step % cfg.eval_every == 0):
                self.run_eval()
            if last or (cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0):
                self.save()
            t0, n, smp, tok = self._window  # evaluation and checkpoints do not count as training time
            self._window = (t0 + time.perf_counter() - paused, n, smp, tok)


def resume_metrics(run_dir: Path, step: int) -> int:
    """Drop metrics logged after `step` by the run being resumed; how many were dropped."""
    return MetricsFile.truncate_after(run_dir / "metrics.jsonl", step)


def load_weights(s: Session, path: Path) -> None:
    """The model (and criterion) tensors of a checkpoint into a session's live model."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    live_sd = get_model_state_dict(s.holder)
    live = {k.replace(".", "/", 1): v for k, v in live_sd.items()}
    saved = read_state(path)
    available = set(tensor_keys(saved["state"]))
    missing = [k for k in live if k.startswith("model/") and k not in available]
    if missing:
        raise KeyError(f"checkpoint {path} lacks model tensors the program has, e.g. {missing[0].split('/', 1)[1]}")
    keys = [k for k in live if k in available]
    tensors = load_tensors(path, keys, live)
    set_model_state_dict(s.holder, {k.replace("/", ".", 1): v for k, v in tensors.items()},
                         options=_non_strict() if len(keys) < len(live) else None)


def _non_strict():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(strict=False)

"""The training loop: steps, gradient accumulation, logging, evaluation and checkpoints.

One optimizer step runs `grad_accum` micro-batches on each rank: together, the train source's
global batch (l3m.data.global_batch). The loss of each is divided by `grad_accum` and gradients
are averaged over the data-parallel ranks, so the step differentiates the mean of the
micro-batches' losses, as the original's chunked accumulation does; for a per-sample (or, with
equal token counts, per-token) mean loss that is the mean over the global batch. Under FSDP,
gradients are synchronised only on the last micro-batch (`set_requires_gradient_sync`).

Logged values come from sufficient statistics (`Criterion.forward_stats`) summed over
micro-batches and ranks: a metric (accuracy, perplexity) is that of the whole global batch, and
a loss the mean of the micro-batches' losses (what the step differentiates), so one file logs
the same numbers on any number of ranks.

Non-finite losses are tracked on the device without a host sync (the first step at which each
loss term went bad) and checked at every log, evaluation and checkpoint, and at the end: the run
stops with the step and the term's name, and a checkpoint is never written after it. Before a
checkpoint the parameters themselves are checked too.

Evaluation runs on every data source other than `train`, in eval mode under `torch.no_grad`
with the training autocast; each result is computed from statistics summed over the whole set
(all ranks): token-weighted for token losses and perplexity, sample-weighted otherwise; the
wrap-around samples that even out the ranks' batches are left out.

With `train.ema` a moving average of the trainable weights (`l3m.train.ema`) is updated after each
optimizer step, checkpointed under `ema/`, restored on resume, and evaluated in place of the
weights with `train.eval_ema`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict, set_state_dict

from l3m.config import compile_mode
from l3m.data.loader import VALID_KEY, StatefulLoader
from l3m.data.sources.mixture import mixture_counts
from l3m.devices import cpu_low_precision_note
from l3m.train import faults, host_memory, perf
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
from l3m.train.ema import WeightsEMA
from l3m.train.logging import MetricsFile, RunLogger
from l3m.train.preempt import Preempted, StopSignals
from l3m.train.safe_dcp import UnsafeCheckpoint
from l3m.train.session import Session


class CheckpointMismatch(ValueError):
    """A whole, verified checkpoint that cannot be loaded into this program's objects."""


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a != b


def _check_groups(saved_optim: Mapping[str, Any], live_optim: Mapping[str, Any]) -> None:
    """The checkpoint's optimizer state fits only the same parameter groups (changed `no_decay`,
    `stage_lr`, `layer_decay` or `freeze` regroup them)."""
    old = [list(g.get("params", [])) for g in saved_optim.get("param_groups", [])]
    new = [list(g.get("params", [])) for g in live_optim.get("param_groups", [])]
    if old and old != new:
        moved = sorted({str(p) for grp in old for p in grp} ^ {str(p) for grp in new for p in grp})
        detail = f" (e.g. {moved[0]} is in one but not the other)" if moved else " (parameters moved between groups)"
        raise ValueError(f"the optimizer's parameter groups changed: {len(old)} group(s) in the checkpoint, "
                         f"{len(new)} now{detail}")


def _control_group() -> Any:
    """The process group the stop flag is reduced on: a CPU (gloo) one beside NCCL, so that the
    check does not wait for the GPU; None (the default group, or no group at all) otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if "nccl" in str(dist.get_backend()).lower():
        return dist.new_group(backend="gloo")
    return None


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


def _from_last_stage(pipe: Any, sums: dict[str, torch.Tensor], count: torch.Tensor,
                     device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from l3m.dist.pp import broadcast_logs

    mine = ({k: v.cpu() for k, v in sums.items()}, count.cpu()) if pipe.has_last else None
    got, n = broadcast_logs(pipe, mine)
    return {k: v.to(device) for k, v in got.items()}, n.to(device)


@torch.no_grad()
def evaluate(s: Session, loaders: Mapping[str, StatefulLoader] | None = None, max_batches: int = 0) -> dict[str, dict]:
    """`{source: {"loss", <terms>, <metrics>, "samples"}}` over the whole evaluation set (all ranks):
    values with sufficient statistics (token losses, accuracy, perplexity) from their sums,
    others as sample-weighted means."""
    loaders = s.eval_loaders if loaders is None else loaders
    pipe = getattr(s.model, "pipeline", None)  # mesh.pp > 1: the stages run in turn (l3m.dist.pp)
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
                    if pipe is None:
                        d = s.model(batch)  # every rank runs every batch: sharded models gather in forward
                    else:
                        from l3m.dist.pp import forward_only

                        d = forward_only(pipe, batch, s.criterion, s.device)
                    n = int(valid.sum())
                    if n == 0 or d is None:  # (None: not the last pipeline stage, which has the outputs)
                        continue
                    if n < valid.shape[0]:
                        d = _valid_subset(d, valid)
                    _, _, stats = s.criterion.forward_stats(d, exact_losses=True, unit=n)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0) + v.detach()
                count += n
            if pipe is not None:  # the last stage's sums, on every pipeline rank
                sums, count = _from_last_stage(pipe, sums, count, s.device)
            keys = list(sums)  # "loss", then terms and metrics in declaration order (the same on every rank)
            packed = torch.cat([count.reshape(1), *[sums[k] for k in keys]]) if keys else count.reshape(1)
            packed = _all_reduce_sum(packed).cpu()
            total_n = float(packed[0])
            # Each value from its statistics summed over batches and ranks: token-weighted where the loss
            # or metric counts tokens, sample-weighted otherwise; the total is the weighted sum of its terms.
            res = {k: float(s.criterion.finish(k, packed[2 * i + 1] / packed[2 * i + 2].clamp(min=1e-300)))
                   for i, k in enumerate(keys)}
            if keys and all(t in res for t in s.criterion.weights):
                res = {"loss": sum(w * res[t] for t, w in s.criterion.weights.items()),
                       **{k: v for k, v in res.items() if k != "loss"}}
            dims = getattr(s.model, "parallel_dims", None)  # tensor/context-parallel peers see the same samples
            res["samples"] = int(total_n) // (dims.world_size // dims.dp_size if dims is not None else 1)
            results[name] = res
    finally:
        s.model.train()
        s.criterion.train()
    return results


def optimizer_step(s: Session) -> None:
    """After the gradients are in (and clipped): the optimizer (through the grad scaler), the schedule,
    and the gradients cleared."""
    s.precision.scaler.step(s.optimizer)
    s.precision.scaler.update()
    if s.scheduler is not None:
        s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)


def add_micro_batch(sums: dict[str, torch.Tensor], reduced: dict[str, torch.Tensor], total: torch.Tensor,
                    logs: Mapping[str, torch.Tensor], stats: Mapping[str, torch.Tensor]) -> None:
    """Add one micro-batch's loss and scalar logs to `sums` and its metric statistics to `reduced`."""
    for k, v in {"loss": total, **logs}.items():
        if v.dim() == 0:
            sums[k] = sums.get(k, 0) + v.float()
    for k, v in stats.items():
        reduced[k] = reduced.get(k, 0) + v


@dataclass
class StepStats:
    logs: dict[str, torch.Tensor]  # "loss", each loss term, each metric: means over micro-batches
    grad_norm: torch.Tensor | None
    samples: int
    tokens: int
    # [sum, count] (float64) of each logged value over this rank's micro-batches: summed over ranks
    # before dividing, a metric's value is that of the whole global batch (Criterion.forward_stats).
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


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
        self.stop: StopSignals | None = None  # set by `l3m train`: SIGTERM/SIGINT stop after a step
        self.program_record: dict[str, Any] | None = None  # the resolved program, kept in each checkpoint
        self.pending_eval = False  # an evaluation a stop deferred (run first on resume)
        self._control = _control_group()
        self.ema: WeightsEMA | None = None  # `train.ema`: made from the weights the run starts from
        host_memory.keep_for_run(session.device.type, self.cfg.keep_freed_memory)

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
        if self.program_record is not None:
            shared["program"] = self.program_record
        if self.pending_eval:
            shared["pending_eval"] = True
        if self.ema is not None:
            shared["ema"] = self.ema.state_dict()
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
        if getattr(self.s.model, "pipeline", None) is not None:  # this pipeline rank's part (checkpoint_pp)
            from l3m.train.checkpoint_pp import restrict_skeleton

            skeleton = restrict_skeleton(skeleton, set(model), optim.get("param_groups", []))
        old = _old_names(skeleton, {f"model.{k}": v for k, v in model.items()})
        if old:  # before the optimizer's groups are compared: that is not what is wrong
            raise ValueError(old)
        _check_groups(skeleton.get("optim", {}), optim)
        fresh = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in g.items() if k != "params"}
                 for g in self.s.optimizer.param_groups]  # the program's settings, before the checkpoint's
        _, live = split_state({"model": model, "criterion": criterion, "optim": optim})
        tensors = load_tensors(found.path, tensor_keys(skeleton), live)
        state = join_state(skeleton, tensors)
        model_sd = {f"model.{k}": v for k, v in state["model"].items()}
        model_sd.update({f"criterion.{k}": v for k, v in state.get("criterion", {}).items()})
        set_state_dict(self.s.holder, self.s.optimizer, model_state_dict=model_sd, optim_state_dict=state["optim"])
        if self.cfg.ema > 0:
            self._restore_ema(found.path, skeleton)
        realign = self._apply_hyper_parameters(fresh)
        if self.s.scheduler is not None and state.get("schedule"):
            realign |= self._load_schedule(dict(state["schedule"]))
        elif self.s.scheduler is not None:  # a schedule added on resume starts where the run stands
            self.s.scheduler.last_epoch, realign = int(state["step"]), True
        if realign:
            self._realign_lr()
        self.pending_eval = bool(state.get("pending_eval", False))
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

    def _make_ema(self) -> WeightsEMA:
        self.ema = WeightsEMA(self.s.named_parameters(), self.cfg.ema, self.cfg.ema_start, self.cfg.ema_device)
        return self.ema

    def _restore_ema(self, path: Path, skeleton: Mapping[str, Any]) -> None:
        """The checkpoint's weight averages (`ema/<name>`), or the restored weights when it has none."""
        ema = self._make_ema()
        saved = skeleton.get("ema")
        live = {f"ema/{n}": t for n, t in ema.state_dict().items()}
        keys = [k for k in tensor_keys(saved) if k in live] if isinstance(saved, dict) else []
        missing = ema.load({k[len("ema/"):]: v for k, v in load_tensors(path, keys, live).items()}) if keys else \
            list(ema.shadow)
        if missing:
            self.logger.warning(f"{path} holds no weight average (train.ema) of {len(missing)} parameter(s), "
                                f"e.g. {missing[0]}; their average starts from the restored weights")

    def _load_schedule(self, saved: dict[str, Any]) -> bool:
        """The schedule's position from the checkpoint, its shape from the program: a run resumed
        with other settings (more `train.steps`) follows the new curve from where it stands.
        Whether the curve changed."""
        live = self.s.scheduler.state_dict()
        changed = "lr_lambdas" in saved and saved["lr_lambdas"] != live.get("lr_lambdas")
        if changed:
            self.logger.warning("the schedule's settings changed since the checkpoint; following the new ones")
            saved["lr_lambdas"] = live["lr_lambdas"]
        self.s.scheduler.load_state_dict(saved)
        return changed

    def _apply_hyper_parameters(self, fresh: list[dict[str, Any]]) -> bool:
        """Loading the optimizer's state also loads the checkpoint's hyper-parameters (lr, weight
        decay, betas, eps, ...); put the program's back, so that a change on resume takes effect.
        Whether a base learning rate changed (the schedule then restarts from it)."""
        realign = False
        for group, new in zip(self.s.optimizer.param_groups, fresh, strict=True):
            for k, v in new.items():
                if k == "lr" and self.s.scheduler is not None:
                    continue  # the schedule's (see _realign_lr)
                if k not in group or _differs(group[k], v):
                    realign |= k in ("initial_lr", "lr_scale")
                    if k == "lr" and isinstance(group[k], torch.Tensor):
                        group[k].fill_(float(v))
                    else:
                        group[k] = v
        return realign

    def _realign_lr(self) -> None:
        """The current learning rates from the schedule's (new) base rates and curve at its position,
        as if the run had been under them all along."""
        sch, groups = self.s.scheduler, self.s.optimizer.param_groups
        sch.base_lrs = [g.get("initial_lr", b) for g, b in zip(groups, sch.base_lrs, strict=True)]
        lambdas = getattr(sch, "lr_lambdas", None)
        if lambdas is None:
            return
        lrs = [b * f(sch.last_epoch) for b, f in zip(sch.base_lrs, lambdas, strict=True)]
        for g, lr in zip(groups, lrs, strict=True):
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr
        sch._last_lr = lrs

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
        pipe = getattr(self.s.model, "pipeline", None)
        if pipe is not None:  # mesh.pp > 1: the pipeline schedule runs the micro-batches (l3m.dist.pp_step)
            from l3m.dist.pp_step import pipeline_step

            return pipeline_step(self, pipe)
        s, accum = self.s, max(1, self.cfg.grad_accum)
        keys = s.input_keys
        sums: dict[str, torch.Tensor] = {}
        reduced: dict[str, torch.Tensor] = {}  # [sum, count] of each logged value over the micro-batches
        samples = tokens = 0
        for micro in range(accum):
            batch = next(s.train_loader)
            samples += perf.batch_size(batch, keys)
            tokens += perf.count_tokens(batch, keys)
            batch = to_device(batch, s.device)
            self._set_grad_sync(micro == accum - 1)
            with s.precision.autocast():
                d = s.model(batch)
                total, logs, stat = s.criterion.forward_stats(d)
            s.precision.scaler.scale(total / accum).backward()
            add_micro_batch(sums, reduced, total.detach(), logs, stat)
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
        optimizer_step(s)
        return StepStats({k: v / accum for k, v in sums.items()}, grad_norm, samples, tokens, reduced)

    # -- reporting ---------------------------------------------------------------------------------

    def _flops_per_sample(self) -> float | None:
        if self._flops is False:
            self._flops = None
            try:
                from l3m.plan import plan

                measured = plan(self.s.program, self.s.runtime.world_size,
                                schedule=self.s.compiled.flow.model_order(), peak=False)["flops_per_sample"]
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
        if stats.stats:  # sums and counts over micro-batches and ranks, then one division
            names = [k for k in names if k in stats.stats]
            packed = torch.cat([stats.stats[k].detach().double() for k in names])
        else:
            packed = torch.stack([stats.logs[k].detach().double() for k in names])
        if stats.grad_norm is not None:
            packed = torch.cat([packed, stats.grad_norm.detach().double().reshape(1)])
        packed = _all_reduce_sum(packed).cpu()  # the host sync of this log step
        if stats.stats:
            values = [float(self.s.criterion.finish(k, packed[2 * i] / packed[2 * i + 1].clamp(min=1e-300)))
                      for i, k in enumerate(names)]
        else:
            values = (packed[: len(names)] / rt.world_size).tolist()
        if stats.grad_norm is not None:
            values.append(float(packed[-1]) / rt.world_size)
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
        loader = self.s.train_loader
        if loader.on_error == "skip":  # bad samples replaced so far, on all ranks (l3m.data.errors)
            record["data_errors"] = int(_all_reduce_sum(torch.tensor(float(loader.data_errors),
                                                                     device=self.s.device)).item())
        record.update(mixture_counts(self.s.train_loader))  # data/<source>: samples drawn from each part
        record["memory_bytes"] = perf.memory_bytes(self.s.device)
        record["step_time_s"] = elapsed / max(steps, 1)
        record["eta_s"] = record["step_time_s"] * (self.cfg.steps - self.step)
        self.last_record = record
        self.logger.log(record)

    def run_eval(self) -> None:
        if not self.s.eval_loaders:
            return
        self.check_finite()
        with self.ema.swapped() if self.ema is not None and self.cfg.eval_ema else contextlib.nullcontext():
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
        if self.s.device.type == "cpu" and (note := cpu_low_precision_note(self.cfg.dtype)):
            self.logger.warning(note)
        if self.ema is None and self.cfg.ema > 0:  # after a restore or train.init_from: from those weights
            self._make_ema()
        if self.cfg.eval_ema and self.ema is None and self.s.eval_loaders:
            self.logger.warning("train.eval_ema is set but train.ema is 0: evaluating the trained weights")
        deferred = self.pending_eval
        if deferred:  # the evaluation of the step this run resumes from, deferred by a stop
            self.run_eval()
            self.pending_eval = False
        stop = self._stop_requested()
        if stop:  # before the first step: nothing new to save but that the deferred evaluation ran
            raise Preempted(stop, self.step, str(self.save()) if deferred else None)
        self._window = (time.perf_counter(), 0, 0, 0)
        self.s.model.train()
        self.s.criterion.train()
        compiling = self._compile_mode() != "none"  # this process's first step traces and compiles
        while self.step < total:
            self.step += 1
            started = time.perf_counter()
            stats = self.train_step()
            if compiling:
                compiling = False
                self._log_compile_time(time.perf_counter() - started)
            if self.ema is not None:
                self.ema.update(self.step)
            self._track(stats)
            t0, n, smp, tok = self._window
            self._window = (t0, n + 1, smp + stats.samples, tok + stats.tokens)
            last = self.step == total
            self.logger.advance(self.step)
            if last or (cfg.log_every > 0 and self.step % cfg.log_every == 0):
                self.check_finite()
                self._log_train(stats)
            paused = time.perf_counter()
            stop = 0
            if last or (cfg.eval_every > 0 and self.step % cfg.eval_every == 0):
                stop = 0 if last else self._stop_requested()
                if stop:  # a stop leaves no time for it: the resumed run evaluates this step first
                    self.pending_eval = bool(self.s.eval_loaders)
                else:
                    self.run_eval()
            saved = None
            if last or stop or (cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0):
                saved = self.save()
            t0, n, smp, tok = self._window  # evaluation and checkpoints do not count as training time
            self._window = (t0 + time.perf_counter() - paused, n, smp, tok)
            faults.after_step(self.step, self.s.runtime.rank)  # inert unless a test sets L3M_FAULT
            if not last:
                stop = stop or self._stop_requested()
                if stop:
                    raise Preempted(stop, self.step, str(saved or self.save()))

    def _compile_mode(self) -> str:
        return compile_mode(self.cfg.compile, self.s.runtime.world_size, self.s.device.type)

    def _log_compile_time(self, seconds: float) -> None:
        mode = self._compile_mode()
        what = "each repeated layer" if mode == "blocks" else "the whole model"
        self.logger.info(f"torch.compile ({mode}: {what}): the first step, compiling included, took {seconds:.1f} s"
                         f"{perf.compile_cache_note()}")

    def _stop_requested(self) -> int:
        """The stop signal's number when any rank received one, else 0 (the same on every rank)."""
        local = self.stop.signum if self.stop is not None and self.stop.signum else 0
        if not self.s.runtime.distributed:
            return int(local)
        flag = torch.tensor([local], dtype=torch.int64)  # on the CPU: gloo, never the GPU's stream
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
        return int(flag.item())


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
        old = _old_names(saved["state"], live_sd)
        if old:  # a value error: its message prints as it is (a KeyError's is quoted)
            raise ValueError(f"checkpoint {path} does not fit the program: {old}")
        raise KeyError(f"checkpoint {path} lacks model tensors the program has, e.g. {missing[0].split('/', 1)[1]}")
    keys = [k for k in live if k in available]
    tensors = load_tensors(path, keys, live)
    set_model_state_dict(s.holder, {k.replace("/", ".", 1): v for k, v in tensors.items()},
                         options=_non_strict() if len(keys) < len(live) else None)
    if s.train.eval_ema:  # the weight averages over the trained weights (l3m.train.ema)
        from l3m.train.ema import load_averages

        load_averages(s, path, saved["state"])


def _old_names(skeleton: dict, live_sd: dict) -> str | None:
    """Why a checkpoint's model tensors do not fit when it was written before parameter names
    carried the model's name (`trunk.x` for `vit.trunk.x`): said with the fix."""
    from l3m.model.naming import missing_model_prefix, rename_fix, root_of

    live = [k.split(".", 1)[1] for k in live_sd if k.startswith("model.")]
    root = root_of(live)
    saved = list(skeleton.get("model", {})) if isinstance(skeleton, dict) else []
    old = missing_model_prefix(saved, live, root) if root else None
    return f"{old}; start a new run from its weights with train.init_from and {rename_fix(root)}" if old else None


def _non_strict():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(strict=False)

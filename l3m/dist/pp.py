"""Pipeline parallelism: the model split into stages (l3m.pp_partition) run by torch.distributed.pipelining.

Each pipeline rank keeps only the blocks and layers its stages own, at their original parameter
names (the others are `Elsewhere` placeholders without parameters), so a checkpoint written under
`pp` names the same tensors as one written without it. A `PipelineChunk` runs one stage: it takes
the keys that cross the cut into it as positional tensors and returns those that cross the next
cut (the last stage: the model outputs the losses read). Keys that come from the batch never cross a
cut: every pipeline rank draws the same batches, and each stage reads them from its own copy,
indexed by the micro-batch number that travels down the pipeline with the tensors. Micro-batches
are the trainer's (`train.grad_accum` per rank and step), so a step computes what one process
computes on the same micro-batches; the loss of each is the schedule's `loss_fn` around l3m's
Criterion on the last stage. Evaluation (`forward_only`) sends one whole batch of any size from
stage to stage instead.

Weights start as in one process: a placeholder initialises the module it replaces for a moment,
drawing the same random numbers in the same order, so every rank's generator stays in step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from l3m.config import MeshConfig, TrainConfig
from l3m.dist.mesh import ParallelDims
from l3m.dist.pp_units import model_units, port_keys
from l3m.model.core import MetaModel
from l3m.pp_partition import (
    INTERNAL,
    Split,
    interleave,
    live_keys,
    partition,
    split_names,
    stage_count,
    stage_ranks,
    unit_index,
)

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


def loss_reads(criterion: nn.Module) -> list[str]:
    """The keys the losses and metrics read, each once, in order: what the last stage must hand them."""
    reads: list[str] = []
    for rw in [*criterion.losses.values(), *criterion.metrics.values()]:
        reads += [k for k in rw.read_keys if k not in reads]
    return reads


class Elsewhere(nn.Module):
    """A block or layer another pipeline rank owns: no parameters, and it must never run."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_original", original)  # not a child: its parameters are not this rank's
        self.register_buffer("_where", torch.empty(0, device="meta"), persistent=False)  # to_empty says where

    def init_weights(self) -> None:
        """Initialise the replaced module for a moment and drop its tensors: the same random draws as one process."""
        from l3m.model.init import init_model

        init_model(self._original.to_empty(device=self._where.device))
        self._original.to("meta")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this block runs on another pipeline rank")


def _replace(root: nn.Module, path: str) -> None:
    owner, _, leaf = path.rpartition(".")
    parent = root.get_submodule(owner) if owner else root
    parent._modules[leaf] = Elsewhere(parent._modules[leaf])


def _here(model: nn.Module, *names: str) -> bool:
    """Whether every named parameter is on this rank."""
    try:
        for name in names:
            model.get_parameter(name)
    except AttributeError:
        return False
    return True


class PipelineChunk(nn.Module):
    """One stage: runs its units on the live keys given in `in_keys` order, returns `out_keys`."""

    def __init__(self, model: MetaModel, split: Split, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        self.index = index
        self.units = split.stage_units(index)
        # (block path, None) for a whole block; (block path, (start, stop)) for a range of its layers
        self.steps: list[tuple[str, tuple[int, int] | None]] = []
        self.ports: dict[str, dict[str, str]] = {}  # a split block's input ports, found once
        for u in self.units:
            if u.layer is None:
                self.steps.append((u.block, None))
            elif self.steps and self.steps[-1][0] == u.block and self.steps[-1][1] is not None:
                self.steps[-1] = (u.block, (self.steps[-1][1][0], u.layer + 1))
            else:
                self.steps.append((u.block, (u.layer, u.layer + 1)))
        self.in_keys: list[str] = list(split.live[index])
        self.out_keys: list[str] = list(split.sends(index))
        self.local_keys: list[str] = []  # keys read from this rank's copy of the batch
        self.last = index == split.stages - 1
        self.batches: list[Mapping[str, Any]] = []  # the step's micro-batches (every pipeline rank has them)
        self.parts = nn.ModuleList(self._owned())

    def _owned(self) -> list[nn.Module]:
        out: list[nn.Module] = []
        for path, span in self.steps:
            block = self._model.get_submodule(path)
            if span is None:
                out.append(block)
                continue
            out += [block.layers[i] for i in range(*span)]
            if span[1] == len(block.layers):
                out.append(block.norm)
        return out

    def set_keys(self, in_keys: Sequence[str], out_keys: Sequence[str], local_keys: Sequence[str]) -> None:
        self.in_keys, self.out_keys, self.local_keys = list(in_keys), list(out_keys), list(local_keys)

    def forward(self, micro: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`micro`: the micro-batch's index, passed down the pipeline with the live keys, so that each
        stage reads the batch keys it needs from its own copy (no integer ids cross a cut; the schedule's
        first-step shape inference sends empty tensors, hence the modulo)."""
        batch = self.batches[int(micro.reshape(-1)[0]) % len(self.batches)]
        env: dict[str, Any] = {k: batch[k] for k in self.local_keys}
        env.update(zip(self.in_keys, tensors, strict=True))
        model = self._model
        for path, span in self.steps:
            binding = model._bindings[path]
            block = model.get_submodule(path)
            if span is None:
                outs = binding.call(block, env)
            else:
                ports = self.ports.get(path) or self.ports.setdefault(path, port_keys(block, binding))
                start, stop = span
                x = env[f"{path}{INTERNAL}x"] if start > 0 else env[ports["x"]]
                x, aux = block.run_layers(x, start, stop, mask=env.get(ports.get("mask", "")),
                                          context=env.get(ports.get("context", "")),
                                          aux=env.get(f"{path}{INTERNAL}aux") if start > 0 else None)
                if stop < len(block.layers):
                    env[f"{path}{INTERNAL}x"], env[f"{path}{INTERNAL}aux"] = x, aux
                    continue
                outs = block.finish(x, aux)
            for key, value in zip(binding.writes, outs):
                if key is not None:
                    env[key] = value
        inputs = {id(t) for t in tensors}
        # a key passed on untouched leaves as a new tensor (the received buffer is the schedule's);
        # what is sent must be contiguous (a pooled `x[:, 0]` is a strided view)
        outs = tuple(env[k].clone() if id(env[k]) in inputs else env[k].contiguous() for k in self.out_keys)
        return outs if self.last else (micro.clone(), *outs)


def refusal(mesh: MeshConfig, train: TrainConfig, dims: ParallelDims, mode: str) -> str | None:
    """Why this mesh and these settings cannot run pipelined (one line), or None."""
    if mode == "model":
        return "mesh.pp > 1 runs each stage's layers on their own: train.compile = \"model\" is not supported " \
               "with pipeline parallelism (use compile = \"blocks\")"
    for name in ("cp", "tp", "ep"):
        if getattr(dims, name) > 1:
            return f"mesh.pp > 1 with mesh.{name} > 1 is not supported yet (pipeline parallelism composes with " \
                   "dp_shard and dp_replicate)"
    if train.dtype == "fp16":
        return "mesh.pp > 1 with dtype = fp16 (loss scaling) is not supported: use bf16"
    if train.float8 not in (False, None):
        return "mesh.pp > 1 with train.float8 is not supported yet"
    if mesh.pp_schedule not in SCHEDULES:
        return f"mesh.pp_schedule must be one of {', '.join(SCHEDULES)}, not {mesh.pp_schedule!r}"
    return None


def pins_of(units, names: Sequence[str]) -> list[int]:
    """The unit indexes `pp_split` names; ValueError with a suggestion for a name that is not one."""
    import difflib

    out = []
    for name in names:
        i = unit_index(units, name)
        if i is None:
            close = difflib.get_close_matches(name, split_names(units), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"mesh.pp_split names '{name}', which is no block or layer of the model{hint}")
        out.append(i)
    return out


def choose_split(model: MetaModel, mesh: MeshConfig, needed: Sequence[str] = (),
                 flops: Mapping[str, float] | None = None) -> Split:
    """The split every rank (and `l3m plan`) computes alike: `pp` stages, or `pp × pp_virtual` interleaved,
    balanced by measured FLOPs per module path (`flops`, l3m.plan_pp) or else by a parameter proxy."""
    units = model_units(model, flops)
    stages = stage_count(mesh.pp, mesh.pp_schedule, mesh.pp_virtual)
    return partition(units, stages, pins_of(units, mesh.pp_split), needed)


def cross_stage_ties(model: MetaModel, split: Split) -> str | None:
    """A parameter two stages would both hold (a tied head and embedding), said as a refusal."""
    owner: dict[int, int] = {}
    for s in range(split.stages):
        for u in split.stage_units(s):
            m = model.get_submodule(u.name)
            if u.layer is not None and u.layer == u.layers - 1:
                m = nn.ModuleList([m, model.get_submodule(u.block).norm])
            for p in m.parameters():
                if owner.setdefault(id(p), s) != s:
                    return (f"'{u.name}' shares a parameter with a block of another pipeline stage (tie/share): "
                            "keep them in one stage with mesh.pp_split, or untie them")
    return None


class Pipeline:
    """This rank's stages of the split model and the schedule that runs them."""

    def __init__(self, model: MetaModel, split: Split, dims: ParallelDims, mesh: MeshConfig) -> None:
        self.model, self.split, self.dims, self.mesh = model, split, dims, mesh
        self.rank = dims.coordinate("pp")
        self.stage_ids = interleave(split.stages, dims.pp)[self.rank]
        from l3m.train.optim import clean_name

        # every parameter name one process has, as checkpoints list them ("model.<name>" in the optimizer's)
        self.parameter_order = [x for n, _ in model.named_parameters() for x in (f"model.{clean_name(n)}", clean_name(n))]
        owned = {u.name for s in self.stage_ids for u in split.stage_units(s)}
        for u in split.units:  # everything else becomes a placeholder, at the same path
            if u.name in owned:
                continue
            if u.layer is None:
                _replace(model, u.name)
            else:
                _replace(model, u.name)
                if u.layer == u.layers - 1:
                    _replace(model, f"{u.block}.norm")
        model._ties = [t for t in model.ties if _here(model, *t)]  # ties inside another rank's stages are its own
        self.chunks: list[PipelineChunk] = []
        self.schedule: Any = None
        self.records: list[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self.target_keys: list[str] = []
        self.targets: list[dict[str, Any]] = []
        self.bound = False

    def make_chunks(self) -> list[PipelineChunk]:
        """The stage modules (after activation checkpointing and compilation replaced layers)."""
        self.chunks = [PipelineChunk(self.model, self.split, s) for s in self.stage_ids]
        return self.chunks

    @property
    def has_last(self) -> bool:
        return self.split.stages - 1 in self.stage_ids

    @property
    def has_first(self) -> bool:
        return 0 in self.stage_ids

    # -- the schedule, made once the losses are known ----------------------------------------------

    def bind_keys(self, criterion: nn.Module) -> list[str]:
        """Point the stages at the keys the losses read; those the model writes (the last stage's outputs)."""
        reads = loss_reads(criterion)
        written = set(self.model.output_keys)
        needed = [k for k in reads if k in written]
        self.target_keys = [k for k in reads if k not in written]
        live = live_keys(self.split.units, needed)
        self.split.live = [live[a] for a, _ in self.split.bounds]
        self.split.outputs = needed
        for chunk in self.chunks:
            after = self.split.outputs if chunk.last else self.split.received(chunk.index + 1)
            chunk.set_keys(self.split.received(chunk.index), after, self.split.batch_keys(chunk.index))
        self.bound = True
        return needed

    def bind(self, criterion: nn.Module, n_microbatches: int, device: torch.device) -> None:
        """Point the stages at the keys the losses read and build the schedule."""
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
        )

        needed = self.bind_keys(criterion)
        group = self.dims.group("pp")
        self.device = device
        stages = [PipelineStage(c, c.index, self.split.stages, device, group=group) for c in self.chunks]

        def loss_fn(output: Any, index: torch.Tensor) -> torch.Tensor:
            # The schedule's targets must be tensors: each is the micro-batch's index into `self.targets`.
            outs = output if isinstance(output, (tuple, list)) else (output,)
            d = {**self.targets[int(index)], **dict(zip(needed, outs, strict=True))}
            total, logs, stats = criterion.forward_stats(d)
            self.records.append((total.detach(), {k: v.detach() for k, v in logs.items()}, stats))
            return total

        kind = self.mesh.pp_schedule
        try:
            if kind == "interleaved_1f1b":
                self.schedule = ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss_fn)
            else:
                cls = ScheduleGPipe if kind == "gpipe" else Schedule1F1B
                self.schedule = cls(stages[0], n_microbatches, loss_fn=loss_fn)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"pipeline schedule {kind} with {n_microbatches} micro-batches (train.grad_accum) on "
                             f"{self.dims.pp} ranks: {e}") from None

    def step(self, batches: Sequence[Mapping[str, Any]]) -> list[tuple[torch.Tensor, dict, dict]]:
        """One forward and backward of every micro-batch; the losses' records (last stage only)."""
        self.records = []
        for chunk in self.chunks:
            chunk.batches = batches
        index = [torch.tensor([i], device=self.device) for i in range(len(batches))]
        self.targets = [{k: b[k] for k in self.target_keys} for b in batches]
        self.schedule.step(arg_mbs=[(i,) for i in index] if self.has_first else None,
                           target_mbs=index if self.has_last else None, return_outputs=False)
        # the first step also runs the losses once to infer shapes: the last records are the micro-batches'
        return self.records[-len(batches):]


def _send(tensors: Sequence[torch.Tensor], dst: int, group: Any) -> None:
    dist.send_object_list([[(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for t in tensors]],
                          group=group, group_dst=dst)
    for t in tensors:
        dist.send(t.contiguous(), group=group, group_dst=dst)


def _recv(src: int, group: Any, device: torch.device) -> list[torch.Tensor]:
    box: list[Any] = [None]
    dist.recv_object_list(box, group=group, group_src=src)
    out = []
    for shape, dtype in box[0]:
        t = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        dist.recv(t, group=group, group_src=src)
        out.append(t)
    return out


@torch.no_grad()
def forward_only(pipe: Pipeline, batch: Mapping[str, Any], criterion: nn.Module,
                 device: torch.device) -> dict[str, Any] | None:
    """One whole batch through the stages in order, without the schedule (evaluation: any batch size):
    the data_dict with the model's outputs on the rank of the last stage, None on the others."""
    if not pipe.bound:
        pipe.bind_keys(criterion)
    group = pipe.dims.group("pp")
    rank_of = stage_ranks(pipe.split.stages, pipe.dims.pp)
    chunks = {c.index: c for c in pipe.chunks}
    micro = torch.zeros(1, dtype=torch.long, device=device)
    outs: Sequence[torch.Tensor] = ()
    for s in sorted(chunks):
        chunk = chunks[s]
        if s > 0 and rank_of[s - 1] != pipe.rank:
            outs = _recv(rank_of[s - 1], group, device)
        chunk.batches = [batch]
        result = chunk(micro, *outs)
        if chunk.last:
            return {**batch, **dict(zip(pipe.split.outputs, result, strict=True))}
        outs = result[1:]
        if rank_of[s + 1] != pipe.rank:
            _send(outs, rank_of[s + 1], group)
    return None


def broadcast_logs(pipe: Pipeline, payload: Any) -> Any:
    """The last stage's step records (dicts and tuples of tensors), sent to every pipeline rank (each logs
    and checks them). Sent as JSON in a byte tensor, never pickled: a rank runs nothing another sends."""
    if pipe.dims.pp == 1:
        return payload
    group, src = pipe.dims.group("pp"), pipe.dims.pp - 1
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
    data = json.dumps(_encode(payload)).encode() if pipe.has_last else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, group=group, group_src=src)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else
           torch.empty(int(size.item()), dtype=torch.uint8))
    buf = buf.to(device) if device is not None else buf
    dist.broadcast(buf, group=group, group_src=src)
    return _decode(json.loads(bytes(buf.cpu().tolist()).decode()))


def _encode(obj: Any) -> Any:
    """A JSON-able form of dicts, tuples/lists and tensors (values exact: JSON floats round-trip)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return {"tensor": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "values": t.flatten().tolist()}
    if isinstance(obj, Mapping):
        return {"dict": {k: _encode(v) for k, v in obj.items()}}
    if isinstance(obj, (tuple, list)):
        return {"list": [_encode(v) for v in obj]}
    if obj is None:
        return {"none": True}
    raise TypeError(f"cannot send a {type(obj).__name__} between pipeline stages")


def _decode(obj: Mapping[str, Any]) -> Any:
    if "tensor" in obj:
        dtype = getattr(torch, obj["tensor"])
        return torch.tensor(obj["values"], dtype=dtype).reshape(obj["shape"])
    if "dict" in obj:
        return {k: _decode(v) for k, v in obj["dict"].items()}
    if "list" in obj:
        return tuple(_decode(v) for v in obj["list"])
    return None

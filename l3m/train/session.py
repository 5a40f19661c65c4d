"""A compiled program turned into live objects: model, criterion, optimizer, schedule, loaders.

The order is fixed so that two runs of one file are the same run: seed everything, build the
model on the meta device, hand it to `l3m.dist.parallelize` when that module exists (the hook
for tensor parallelism, activation checkpointing, compilation and FSDP2: it receives the meta
model, the `mesh` and `train` settings, and returns the model to train), then allocate it on the
device and initialise it, then the criterion, optimizer and schedule, then the data.

`Runtime` is the process's place in the world: rank, world size and device, read from the
torchrun environment; `init_runtime` starts the process group (gloo on CPU, NCCL on GPU) when
there is more than one process, and `shutdown_runtime` always ends it.
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from l3m.config import LogConfig, MeshConfig, TrainConfig, build_section, compile_mode
from l3m.data.errors import reset_scan_policy, set_scan_policy
from l3m.data.global_batch import BatchLayout, derive_layout, source_batch_size, train_settings
from l3m.data.loader import StatefulLoader, build_loader, mix_seed
from l3m.data.sources.mixture import Mixture, mixture_parts, part_names
from l3m.dsl import Compiled
from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Call, Node, Program, Span
from l3m.model.blame import BLOCK_FAILED, BlockFailure, ProgramError, error_text
from l3m.model.build import build_model, entry_for, instantiate, materialize
from l3m.model.criterion import Criterion, build_criterion
from l3m.model.pruning import apply_training_rewrites
from l3m.registry import RUNTIME_PARAMS, load_builtins, lookup
from l3m.train.precision import Precision

TRAIN_SOURCE = "train"


# -- the process --------------------------------------------------------------------------------


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_process_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(local_rank: int) -> torch.device:
    """`L3M_DEVICE` when set (e.g. `cpu` on a GPU machine), else this rank's GPU, else the CPU."""
    wanted = os.environ.get("L3M_DEVICE", "")
    if wanted:
        dev = torch.device(wanted)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_runtime() -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = world > 1 and not dist.is_initialized()
    if owns:  # NCCL on GPUs, gloo on the CPU, with a timeout so that a lost rank fails the others
        from l3m.dist import init_distributed

        init_distributed(device)
    return Runtime(rank, world, local, device, owns)


def shutdown_runtime(rt: Runtime | None) -> None:
    if rt is not None and rt.owns_process_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (every device) alike on every rank; with `deterministic`,
    also make torch refuse non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# -- what a command needs -------------------------------------------------------------------------


class IncompleteProgram(Exception):
    """The program compiles but lacks what the command needs (E701 diagnostics)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("; ".join(d.message for d in diagnostics))


def _file_span(program: Program) -> Span:
    return Span(program.file, 1, 1, 1, 1)


def check_complete(program: Program, command: str) -> None:
    """`train` needs a model, a loss, an optimizer and a source named `train`; `eval` a model, a
    loss and some source."""
    problems = []
    if not program.blocks:
        problems.append("the program declares no model blocks")
    if not program.of_role("loss"):
        problems.append("the program declares no loss")
    sources = [n.name for n in program.of_role("source")]
    if command == "train":
        if program.optimizer is None:
            problems.append("the program declares no optimizer")
        if TRAIN_SOURCE not in sources:
            found = f" (it has {', '.join(sources)})" if sources else ""
            problems.append(f"the program declares no data source named '{TRAIN_SOURCE}'{found}")
    elif not sources:
        problems.append("the program declares no data source")
    if problems:
        help_ = {"train": "`l3m train` needs a model, a loss, an optimizer and `data { train: ... }`",
                 "eval": "`l3m eval` needs a model, a loss and a data source"}[command]
        raise IncompleteProgram([Diagnostic("E701", p, _file_span(program), help_) for p in problems])


# -- building -------------------------------------------------------------------------------------


def call_factory(call: Call, kind: str, *runtime: Any) -> Any:
    """Call a registered optimizer or schedule: the trainer's leading arguments, then the file's."""
    load_builtins()
    entry = lookup(call.type_name)
    if entry is None or entry.kind != kind:
        raise ValueError(f"{call.type_span}: {call.type_name!r} is not a registered {kind}")
    sig = entry.signature
    skip = RUNTIME_PARAMS.get(kind, 0)
    file_sig = sig.replace(parameters=list(sig.parameters.values())[skip:])
    try:
        return entry.obj(*runtime, **call.kwargs_for(file_sig))
    except (TypeError, ValueError) as e:  # the file's arguments, refused by the optimizer or schedule itself
        raise ProgramError(Diagnostic(BLOCK_FAILED, f"{kind} '{call.type_name}' could not be built: {error_text(e)}",
                                      call.type_span, "check its arguments (`l3m blocks -v` lists them)")) from e


def build_generators(program: Program) -> list[tuple[Any, dict[str, str], dict[str, str]]]:
    out = []
    for node in sorted(program.of_role("generator"), key=lambda n: n.index):
        entry = entry_for(node.call, ("generator",), f"{node.span}: {node.path}")
        out.append((instantiate(node.call, entry), node.ports_in(), node.ports_out()))
    return out


def build_source_loader(node: Node, generators: Sequence, rt: Runtime, train: TrainConfig,
                        data_rank: tuple[int, int] | None = None, grad_accum: int = 1,
                        program: Program | None = None) -> StatefulLoader:
    """`data_rank`: this rank's (index, count) among the ranks that read different samples (the
    data-parallel ones under a mesh; tensor- and context-parallel peers read the same samples);
    default: every process reads its own. The source's `batch_size` is the global batch of those
    ranks, drawn by each as `grad_accum` micro-batches."""
    rank, world = data_rank if data_rank is not None else (rt.rank, rt.world_size)
    entry = entry_for(node.call, ("source",), f"{node.span}: {node.path}")
    try:
        source = instantiate(node.call, entry)
    except OSError:  # a missing or unreadable dataset: an I/O error (exit 2), said as it is
        raise
    except Exception as e:  # the source's constructor refused the file's arguments
        raise BlockFailure(node, e, building=True) from e
    if isinstance(source, Mixture) and program is not None:
        source = bind_mixture(source, node, program)
    return build_loader(
        source,
        generators,
        node.ports_out(),
        rank=rank,
        world_size=world,
        seed=train.seed,
        num_workers=train.num_workers,
        pin_memory=rt.device.type == "cuda",
        grad_accum=grad_accum,
    )


def bind_mixture(source: Mixture, node: Node, program: Program) -> Mixture:
    """Build the data entries a Mixture names and hand them to it."""
    parts = []
    for part in mixture_parts(program, node):
        try:
            parts.append((instantiate(part.call, entry_for(part.call, ("source",), f"{part.span}: {part.path}")),
                          part.ports_out()))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{part.span}: data source '{part.name}': {e}") from e
    try:
        return source.bind(parts, node.write_keys)
    except ValueError as e:
        raise ValueError(f"{node.span}: data source '{node.name}': {e}") from e


def train_layout(node: Node, program: Program, train: TrainConfig, dp: int) -> BatchLayout:
    """The global batch's split on `dp` data-parallel ranks; writes the derived `grad_accum` and
    `micro_batch` into `train` (the trainer's step draws that many micro-batches)."""
    batch, _ = source_batch_size(node)
    if batch is None:
        raise ValueError(f"{node.span}: data source '{node.name}': its batch_size is not an integer")
    accum, micro = train_settings(program)
    try:
        layout = derive_layout(batch, dp, accum, micro)
    except ValueError as e:
        raise ValueError(f"{node.span}: data source '{node.name}': {e} (set batch_size, train.grad_accum or "
                         "train.micro_batch so that they divide)") from None
    train.grad_accum, train.micro_batch = layout.accum, layout.micro
    return layout


def parallelize(model: nn.Module, mesh: MeshConfig, train: TrainConfig) -> tuple[nn.Module, bool]:
    """`l3m.dist.parallelize(model, mesh, train)` when l3m.dist exists; `(model, handled)`.

    `handled` says that the parallel wrapper owns gradient synchronisation (and compilation).
    """
    try:
        mod = importlib.import_module("l3m.dist")
    except ModuleNotFoundError as e:
        if e.name not in ("l3m.dist", "l3m"):
            raise
        return model, False
    fn = getattr(mod, "parallelize", None)
    if fn is None:
        return model, False
    out = fn(model, mesh, train)
    return (out if out is not None else model), True


@dataclass
class Session:
    compiled: Compiled
    runtime: Runtime
    train: TrainConfig
    mesh: MeshConfig
    log: LogConfig
    model: nn.Module
    criterion: Criterion
    precision: Precision
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    train_loader: StatefulLoader | None = None
    eval_loaders: dict[str, StatefulLoader] = field(default_factory=dict)
    parallel: bool = False  # l3m.dist wrapped the model and synchronises gradients

    @property
    def program(self) -> Program:
        return self.compiled.program

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def holder(self) -> nn.ModuleDict:
        """Model and criterion under one root, so that one state dict names every parameter."""
        return nn.ModuleDict({"model": self.model, "criterion": self.criterion})

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The model's parameters by their own names, then the criterion's (learnable loss
        parameters such as a temperature) under `criterion.`."""
        out = list(self.model.named_parameters())
        seen = {id(p) for _, p in out}
        out += [(f"criterion.{n}", p) for n, p in self.criterion.named_parameters() if id(p) not in seen]
        return out

    @property
    def input_keys(self) -> list[str]:
        return list(getattr(self.model, "input_keys", []))

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        for loader in [self.train_loader, *self.eval_loaders.values()]:
            if loader is not None:
                loader.close()


def build_session(compiled: Compiled, rt: Runtime, *, command: str = "train") -> Session:
    """Everything `command` ("train" or "eval") needs, on this rank's device."""
    program = compiled.program
    check_complete(program, command)
    train = build_section("train", program.section("train"))
    mesh = build_section("mesh", program.section("mesh"))
    log = build_section("log", program.section("log"))
    seed_everything(train.seed, train.deterministic)
    if train.tf32:  # float32 matmuls and convolutions on TF32 tensor cores (Ampere and newer)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    model = build_model(program, device="meta", schedule=compiled.flow.model_order())
    if getattr(mesh, "pp", 1) > 1:  # stages balanced by measured FLOPs (before fusions), as `l3m plan` shows
        from l3m.plan_pp import measured_unit_flops

        model.pp_flops = measured_unit_flops(program, model)
    if command == "train":  # training only: evaluation and generation read the logits themselves
        apply_training_rewrites(model, program)
    model, parallel = parallelize(model, mesh, train)
    materialize(model, rt.device)
    dims = getattr(model, "parallel_dims", None)  # set by l3m.dist.parallelize
    if compile_mode(train.compile, 1, rt.device.type) != "none" and not parallel:  # else l3m.dist compiles
        model.compile()  # one graph for the whole straight-line forward
    criterion = build_criterion(program, device=rt.device)
    if dims is not None:
        importlib.import_module("l3m.dist").parallelize_criterion(criterion, dims)
    data_rank = (dims.dp_rank, dims.dp_size) if dims is not None else None
    if data_rank is not None and data_rank[1] > 1:
        # The weights are initialised alike everywhere; from here on, data-parallel ranks draw their own
        # dropout / drop-path masks (tensor- and context-parallel peers, on the same samples, share them).
        torch.manual_seed(mix_seed(train.seed, data_rank[0]))
    session = Session(compiled, rt, train, mesh, log, model, criterion, Precision(train.dtype, rt.device),
                      parallel=parallel)

    if command == "train":
        session.optimizer = call_factory(program.optimizer, "optimizer", session.named_parameters())
        if program.schedule is not None:
            session.scheduler = call_factory(program.schedule, "schedule", session.optimizer, train.steps)

    generators = build_generators(program)
    # Augmentations (mixup/cutmix) shape training only; evaluation sees the data as it is, and a
    # generator with an evaluation form (`for_eval`, e.g. AIM's full-attention prefix) uses it there.
    eval_generators = [(g.for_eval() if hasattr(g, "for_eval") else g, i, o)
                       for g, i, o in generators if not getattr(g, "train_only", False)]
    parts = part_names(program)  # the sources of a Mixture are not sources of their own
    sources = sorted((n for n in program.of_role("source") if n.name not in parts), key=lambda n: n.index)
    data = build_section("data", program.section("data"))  # the bad-data policy (l3m.data.errors)
    scan = set_scan_policy(data.on_error)  # what the sources' indexes do with what they cannot read
    for node in sources:
        if node.name == TRAIN_SOURCE and command == "train":
            layout = train_layout(node, program, train, data_rank[1] if data_rank is not None else rt.world_size)
            session.train_loader = build_source_loader(node, generators, rt, train, data_rank, layout.accum,
                                                       program=program)
        elif node.name != TRAIN_SOURCE:
            session.eval_loaders[node.name] = build_source_loader(node, eval_generators, rt, train, data_rank,
                                                                  program=program)
    if command == "eval" and not session.eval_loaders:  # nothing held out: evaluate on the training data
        node = next(n for n in sources if n.name == TRAIN_SOURCE)
        session.eval_loaders[node.name] = build_source_loader(node, eval_generators, rt, train, data_rank,
                                                              program=program)
    reset_scan_policy(scan)
    for loader in [session.train_loader, *session.eval_loaders.values()]:
        if loader is not None:
            loader.set_error_policy(data.on_error, data.max_error_fraction)
    return session

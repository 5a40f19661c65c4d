"""A trained model for the suites: its program, weights, data settings, and partial forwards.

A suite needs pieces of a model (CLIP's image tower alone, AIM's trunk without its decoder), so
`EvalModel.run` runs only the blocks whose inputs are present, in the compiled schedule, and can
stop after a given block. Weights load as `l3m eval` loads them (a run directory's newest complete
checkpoint, one checkpoint directory, or a safetensors file): never through pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from l3m.dsl import Compiled
from l3m.evals.errors import EvalInputError
from l3m.model.build import build_model, entry_for, instantiate, materialize
from l3m.model.core import MetaModel, ReadWriteBlock
from l3m.model.criterion import build_criterion
from l3m.train.session import Runtime, Session, build_generators, pick_device

TRUNK_STAGE = "trunk"


@dataclass
class EvalModel:
    """The loaded model with what the suites read from its program."""

    session: Session
    step: int  # the checkpoint's step, -1 for a weights file
    run_dir: Path | None  # where results are logged (None: the weights did not come from a run)
    sources: dict[str, Any] = field(default_factory=dict)  # the program's data sources (settings only)

    @property
    def model(self) -> MetaModel:
        return self.session.model  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def program(self):
        return self.session.program

    def source_ports(self) -> dict[str, dict[str, str]]:
        """Each data source's `{port: key}`."""
        return {n.name: n.ports_out() for n in self.program.of_role("source")}

    def loss_input_key(self, port: str) -> str | None:
        """The key some loss or metric reads through port `port` (e.g. ClipLoss's `image_emb`)."""
        for role in ("loss", "metric"):
            for n in self.program.of_role(role):
                key = n.ports_in().get(port)
                if key:
                    return key
        return None

    @torch.no_grad()
    def run(self, inputs: Mapping[str, torch.Tensor], stop_after: str | None = None) -> dict[str, torch.Tensor]:
        """The data dict after every block whose inputs are available (in schedule order), up to and
        including block `stop_after`. Blocks that read a key nobody provides are skipped."""
        self.model.eval()
        d = {k: v.to(self.device) for k, v in inputs.items()}
        blocks = dict(self.model.block_items())
        with self.session.precision.autocast():
            for path in self.model.schedule:
                rw = blocks[path]
                if all(k in d for k in rw.read_keys):
                    d = rw(d)
                if path == stop_after:
                    break
        return d

    @cached_property
    def generators(self) -> list:
        """The program's generators as built for training: `(generator, in keys, out keys)`."""
        return build_generators(self.program)

    def with_generators(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` plus what the program's generators add in their evaluation form; AIM's prefix
        length is the whole sequence (full attention, as the AIM papers probe)."""
        from l3m.data.generators import FixedPrefixLength, RandomPrefixLength
        from l3m.data.loader import run_generator

        out = dict(batch)
        rng = torch.Generator().manual_seed(0)
        for gen, ins, outs in self.generators:
            if isinstance(gen, RandomPrefixLength):
                gen = FixedPrefixLength(gen.eval_len or gen.high + 1)
            elif hasattr(gen, "for_eval"):
                gen = gen.for_eval()
            if getattr(gen, "train_only", False):
                continue
            keys = ins.values() if isinstance(ins, Mapping) else ins
            if all(k in out for k in keys):
                run_generator(gen, ins, outs, out, rng)
        return out

    def trunk_block(self, reads: str) -> tuple[str, str]:
        """(path, output key) of the last trunk block computable from key `reads` alone
        (plus the generators): the features a probe reads."""
        available = {reads}
        for _, ins, outs in self.generators:
            if all(k in available for k in (ins.values() if isinstance(ins, Mapping) else ins)):
                available.update(outs.values() if isinstance(outs, Mapping) else outs)
        found = None
        for path, rw in _in_schedule(self.model):
            if all(k in available for k in rw.read_keys):
                available.update(k for k in rw.write_keys)
                if TRUNK_STAGE in path.split(".")[:-1] and rw.write_keys:
                    found = (path, rw.write_keys[0])
        if found is None:
            raise EvalInputError(f"the model has no block in a `{TRUNK_STAGE}` stage that reads from '{reads}'")
        return found


def _in_schedule(model: MetaModel) -> list[tuple[str, ReadWriteBlock]]:
    blocks = dict(model.block_items())
    return [(p, blocks[p]) for p in model.schedule]


def load_model(target: str, overrides: Sequence[str] = (), checkpoint: str | None = None,
               extensions: Sequence[str] = (), rt: Runtime | None = None) -> EvalModel:
    """`target`: a run directory (its recorded program and overrides, its newest checkpoint) or a
    `.l3m` file with `checkpoint` (run directory, checkpoint directory or safetensors file).

    Raises `EvalInputError` for what the user gave wrong, `ProgramErrors` (diagnostics printed)
    for a program that does not compile or build."""
    from l3m.train.rundir import NotARunRecord, read_run_record

    rt = rt or Runtime(device=pick_device(0))  # a GPU when there is one (L3M_DEVICE chooses)
    path = Path(target)
    run_dir: Path | None = None
    if path.is_dir():
        try:
            program, recorded, _ = read_run_record(path)
        except NotARunRecord as e:
            raise EvalInputError(str(e)) from None
        overrides, run_dir = [*recorded, *overrides], path
        checkpoint = checkpoint or str(path)
        target = str(program)
    elif not path.is_file():
        raise EvalInputError(f"no such run directory or .l3m file: {target}")
    if not checkpoint:
        raise EvalInputError("give --checkpoint (a run directory, checkpoint directory or .safetensors file) "
                             "with a .l3m file, or a run directory instead of the file")
    session = _build(target, overrides, rt, extensions)
    step = _load_weights(session, Path(checkpoint), rt)
    logged_to = (run_dir or _run_of(Path(checkpoint))) if step >= 0 else None  # a weights file has no step
    return EvalModel(session, step, logged_to, _sources(session))


def _run_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint directory belongs to (the run, its `ckpt/` or one `step_*` in
    it); None for a weights file, whose step is unknown."""
    if not checkpoint.is_dir():
        return None
    for p in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if p.is_dir() and (p / "run.json").is_file():
            return p
    return None


def _build(target: str, overrides: Sequence[str], rt: Runtime, extensions: Sequence[str]) -> Session:
    from l3m.config import build_section
    from l3m.model.blame import ProgramError
    from l3m.train.api import ProgramErrors, _compile, _print_program_error
    from l3m.train.precision import Precision

    compiled = _compile(target, overrides, rt, extensions)
    if isinstance(compiled, int):
        raise ProgramErrors(compiled)
    assert isinstance(compiled, Compiled)
    program = compiled.program
    if not program.blocks:
        raise EvalInputError(f"{target}: the program declares no model")
    train = build_section("train", program.section("train"))
    try:
        model = build_model(program, device="meta", schedule=compiled.flow.model_order())
        materialize(model, rt.device)
        criterion = build_criterion(program, device=rt.device)
    except ProgramError as e:
        _print_program_error(rt, e, compiled.sources)
        raise ProgramErrors(1) from e
    return Session(compiled, rt, train, build_section("mesh", program.section("mesh")),
                   build_section("log", program.section("log")), model, criterion, Precision(train.dtype, rt.device))


def _load_weights(session: Session, checkpoint: Path, rt: Runtime) -> int:
    from l3m.train.checkpoint import read_state, resolve_checkpoint
    from l3m.train.engine import load_weights
    from l3m.train.export import load_pretrained

    if checkpoint.is_file():
        load_pretrained(session.model, checkpoint, strict=True)
        return -1
    ckpt = resolve_checkpoint(checkpoint)
    load_weights(session, ckpt)
    return int(read_state(ckpt).get("step", -1))


def _sources(session: Session) -> dict[str, Any]:
    """The program's data sources, constructed for their settings (image size, normalisation,
    tokenizer); none reads its data here. One that cannot be built is left out."""
    out: dict[str, Any] = {}
    for node in session.program.of_role("source"):
        try:
            out[node.name] = instantiate(node.call, entry_for(node.call, ("source",), node.name))
        except Exception:  # noqa: BLE001 - e.g. a tokenizer left to an unset variable; the suite says what it lacks
            continue
    return out

"""The entry points behind `l3m train`, `l3m eval` and `l3m export`.

Exit codes: 0 done; 1 errors found (the program does not compile or lacks what the command
needs, a loss went non-finite, a checkpoint does not fit); 2 usage or I/O (a missing file, an
unreadable path, nothing to resume from). Compile errors are printed compiler-style on stderr.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from l3m.dsl import Compiled, compile_file
from l3m.dsl.diagnostics import Diagnostic, render_text
from l3m.train.checkpoint import CheckpointManager, Found, read_state, resolve_checkpoint
from l3m.train.engine import NonFiniteError, Trainer, evaluate, load_weights, resume_metrics
from l3m.train.export import export_checkpoint, load_pretrained
from l3m.train.logging import ConsoleSink, RunLogger
from l3m.train.rundir import default_run_dir, resolved, write_program_record
from l3m.train.session import (
    IncompleteProgram,
    Runtime,
    Session,
    build_session,
    init_runtime,
    shutdown_runtime,
)


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


def _err(rt: Runtime | None, text: str) -> None:
    """Rank 0 prints the error; other ranks print theirs with their rank, since it may be theirs alone."""
    if rt is None or rt.is_main:
        print(f"error: {text}", file=sys.stderr, flush=True)
    else:
        print(f"error (rank {rt.rank}): {text}", file=sys.stderr, flush=True)


def _print_diagnostics(rt: Runtime, diags: Sequence[Diagnostic], sources) -> None:
    if rt.is_main:
        for d in diags:
            print(render_text(d, sources, color=sys.stderr.isatty()), file=sys.stderr, flush=True)


def _compile(path: str, overrides: Sequence[str], rt: Runtime, extensions: Sequence[str]) -> Compiled | int:
    """The compiled program, or the exit code after printing why it cannot run."""
    compiled = compile_file(path, list(overrides), world_size=rt.world_size, extensions=tuple(extensions),
                            import_extensions=True)  # running needs their code (a note on stderr says so)
    shown = [d for d in compiled.diagnostics if d.severity != "note"]
    _print_diagnostics(rt, shown, compiled.sources)
    if compiled.ok:
        return compiled
    errors = compiled.errors
    return 2 if errors and all(d.code == "E002" for d in errors) else 1


class InitFromError(ValueError):
    """`train.init_from` names weights that do not fit the model (reported like any bad value: exit 1)."""


def _init_from(session, logger) -> None:
    """Load `train.init_from` into the fresh model: the tensors it selects must fit exactly; model
    tensors it does not provide (a new head) keep their initialisation and are listed."""
    t = session.train
    rename = dict(pair.split("=", 1) for pair in t.init_rename)
    try:
        report = load_pretrained(session.model, t.init_from, include=t.init_include, exclude=t.init_exclude,
                                 rename=rename, strict=False)
    except (OSError, ValueError) as e:
        raise InitFromError(f"train.init_from: cannot read '{t.init_from}': {e}") from e
    if report.unexpected or report.mismatched:
        raise InitFromError(f"train.init_from: '{t.init_from}' does not fit the model: {report.summary()} "
                            "(select tensors with train.init_include / init_exclude, rename with train.init_rename)")
    logger.info(f"initialised from {t.init_from}: {report.summary()}")


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


Notes = list[tuple[str, str]]  # (level, text) said once the logger exists


def _set_aside(run_dir: Path, notes: Notes) -> None:
    """A fresh start in a directory with checkpoints: keep the old ones as `ckpt.prev`."""
    ckpt = run_dir / "ckpt"
    if ckpt.is_dir() and any(ckpt.iterdir()):
        prev = run_dir / "ckpt.prev"
        shutil.rmtree(prev, ignore_errors=True)
        ckpt.rename(prev)
        notes.append(("info", f"not resuming: moved the earlier checkpoints to {prev}"))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        metrics.replace(run_dir / "metrics.prev.jsonl")


def _choose_checkpoint(ckpt: CheckpointManager, resume: bool | None, notes: Notes) -> Found | None:
    ckpt.clean_stale()
    found = ckpt.latest_valid() if ckpt.has_any() else None
    if found is None and resume is True:
        raise UsageError(f"--resume: no complete checkpoint to resume from in {ckpt.root}")
    if found is None and ckpt.has_any():
        notes.append(("warning", f"no usable checkpoint in {ckpt.root}; starting from scratch"))
    for moved in ckpt.set_aside_after(found.step if found is not None else 0):
        notes.append(("info", f"set {moved.name[: -len('.skipped')]} aside as {moved}"))
    return found


def train_main(
    path: str,
    overrides: Sequence[str] = (),
    output: str | None = None,
    resume: bool | None = None,
    extensions: Sequence[str] = (),
) -> int:
    """Train the program in `path`. `resume`: True requires a checkpoint to continue from, None
    continues from one when the output directory has it, False starts afresh (setting the old
    checkpoints aside)."""
    rt: Runtime | None = None
    session: Session | None = None
    logger = RunLogger.null()
    code = 0
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        rt = init_runtime()
        compiled = _compile(path, overrides, rt, extensions)
        if isinstance(compiled, int):
            return compiled
        run_dir = Path(output) if output else default_run_dir(path)
        session = build_session(compiled, rt, command="train")
        notes: Notes = []
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if resume is False:
                _set_aside(run_dir, notes)
        _barrier(rt)
        ckpt = CheckpointManager(run_dir / "ckpt", keep=session.train.keep, rank=rt.rank, report=lambda t: notes.append(("warning", t)))
        found = _choose_checkpoint(ckpt, resume, notes) if resume is not False else None
        if rt.is_main:
            if found is not None:
                dropped = resume_metrics(run_dir, found.step)
                if dropped:
                    notes.append(("info", f"dropped {dropped} metrics line(s) logged after step {found.step}"))
            write_program_record(run_dir, compiled.program, compiled.flow.model_order(), rt.world_size)
            logger = RunLogger.for_run(run_dir, session.log, compiled.program.section("log"), session.train.steps,
                                       resolved(compiled.program, compiled.flow.model_order()))
        for level, text in notes:
            (logger.warning if level == "warning" else logger.info)(text)
        trainer = Trainer(session, run_dir, logger, ckpt)
        if found is not None:
            trainer.restore(found)
            logger.info(f"resumed from {found.path} at step {trainer.step}")
        else:
            if session.train.init_from:
                _init_from(session, logger)
            logger.info(f"training {Path(path).name} for {session.train.steps} steps into {run_dir}")
        trainer.fit()
        if trainer.last_record:
            logger.info(f"done: step {trainer.step}, loss {trainer.last_record['loss']:.4f}")
        return 0
    except IncompleteProgram as e:
        code = 1
        _print_diagnostics(rt, e.diagnostics, compiled.sources)
        return code
    except NonFiniteError as e:
        code = 1
        logger.error(str(e))
        if logger.console is None:
            _err(rt, str(e))
        return code
    except (UsageError, OSError) as e:
        code = 2
        _err(rt, str(e))
        return code
    except (ValueError, KeyError, TypeError) as e:
        code = 1
        _err(rt, f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
        return code
    except BaseException:  # a bug or an interrupt: the traceback is the report; wandb hears of the failure
        code = 1
        raise
    finally:
        if session is not None:
            session.close()
        logger.close(code)
        torch.use_deterministic_algorithms(deterministic_before)
        shutdown_runtime(rt)


def run_eval(path: str, overrides: Sequence[str], checkpoint: str, extensions: Sequence[str] = (),
             rt: Runtime | None = None) -> tuple[int, dict[str, dict]]:
    """Evaluate the weights in `checkpoint` (a run, checkpoint directory or weights file) on the
    program's evaluation sources: `(step of the checkpoint or -1, {source: results})`.

    Raises `ProgramErrors` when the program does not compile or cannot be evaluated."""
    rt = rt or Runtime()
    compiled = _compile(path, overrides, rt, extensions)
    if isinstance(compiled, int):
        raise ProgramErrors(compiled)
    try:
        session = build_session(compiled, rt, command="eval")
    except IncompleteProgram as e:
        _print_diagnostics(rt, e.diagnostics, compiled.sources)
        raise ProgramErrors(1) from e
    source = Path(checkpoint)
    step = -1
    if source.is_file():
        report = load_pretrained(session.model, source, strict=True)
        if rt.is_main:
            print(report.summary(), flush=True)
    else:
        ckpt = resolve_checkpoint(source, report=lambda t: _err(rt, t))
        load_weights(session, ckpt)
        step = int(read_state(ckpt).get("step", -1))
    return step, evaluate(session, max_batches=session.train.eval_steps)


class ProgramErrors(Exception):
    """The program was reported as not runnable (its diagnostics already printed); `code` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit code {code}")
        self.code = code


def eval_main(path: str, overrides: Sequence[str], checkpoint: str, extensions: Sequence[str] = ()) -> int:
    """Evaluate a trained run (`--checkpoint`: run directory, checkpoint or weights file) on every
    data source other than `train` (on `train` when there is no other) and print the results."""
    rt: Runtime | None = None
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        rt = init_runtime()
        step, results = run_eval(path, overrides, checkpoint, extensions, rt)
        if rt.is_main:
            console = ConsoleSink("rich" if sys.stdout.isatty() else "plain", total_steps=max(step, 0))
            for name, res in results.items():
                console.record({"split": name, "step": step, **res})
        return 0
    except ProgramErrors as e:
        return e.code
    except OSError as e:
        _err(rt, str(e))
        return 2
    except (ValueError, KeyError, TypeError) as e:
        _err(rt, str(e))
        return 1
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        shutdown_runtime(rt)


def export_main(run_dir_or_checkpoint: str, out_path: str) -> int:
    """Write the model weights of a run's newest complete checkpoint (or of one checkpoint
    directory) to `out_path` as a consolidated safetensors file."""
    try:
        ckpt = resolve_checkpoint(run_dir_or_checkpoint, report=lambda t: print(f"warning: {t}", file=sys.stderr))
        info = export_checkpoint(ckpt, out_path)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {info['tensors']} tensors from {ckpt} (step {info['step']}) to {out_path}")
    return 0

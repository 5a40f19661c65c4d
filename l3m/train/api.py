"""The entry points behind `l3m train`, `l3m eval` and `l3m export`.

Exit codes: 0 done; 1 errors found (the program does not compile or lacks what the command
needs, a loss went non-finite, a checkpoint does not fit or could not be written, e.g. on a full
disk, a resume that changes a structural setting); 2 usage or I/O (a missing file, an unreadable
path, nothing to resume from, a run directory another run holds); 128 + the signal (143 SIGTERM,
130 SIGINT): `train` stopped by that signal after saving a checkpoint. Compile errors
are printed compiler-style on stderr. In a multi-process run each rank's error names the rank and
is handed to torchrun for its summary (`l3m.train.rank_errors`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from l3m.dsl import Compiled, compile_file
from l3m.dsl.diagnostics import Diagnostic, render_text
from l3m.model.blame import ProgramError, blame
from l3m.model.patterns import check_init_globs, unused_no_decay
from l3m.term import color_enabled
from l3m.train import rank_errors
from l3m.train.candidates import no_checkpoint_message
from l3m.train.checkpoint import (
    CheckpointManager,
    CheckpointWriteError,
    Found,
    read_state,
    resolve_checkpoint,
)
from l3m.train.engine import CheckpointMismatch, NonFiniteError, Trainer, evaluate, load_weights
from l3m.train.export import export_checkpoint, load_pretrained, read_weights
from l3m.train.logging import MESSAGES, ConsoleSink, RunLogger
from l3m.train.preempt import Preempted, handle_stop_signals
from l3m.train.resume_changes import check_resume, jsonable, mismatch_message
from l3m.train.rundir import append_history, default_run_dir, read_history, resolved, write_program_record
from l3m.train.runlock import RunLock
from l3m.train.session import (
    IncompleteProgram,
    Runtime,
    Session,
    build_session,
    init_runtime,
    pick_device,
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
    rank_errors.record_failure(text)  # torchrun's summary then names this rank with its message


def _print_diagnostics(rt: Runtime, diags: Sequence[Diagnostic], sources) -> None:
    if rt.is_main:
        for d in diags:
            print(render_text(d, sources, color=color_enabled(sys.stderr)), file=sys.stderr, flush=True)


def _print_program_error(rt: Runtime | None, e: ProgramError, sources) -> None:
    """The diagnostic of a program's mistake (with the traceback under L3M_DEBUG); other ranks say it in one line."""
    if os.environ.get("L3M_DEBUG"):
        traceback.print_exception(e.__cause__ or e, file=sys.stderr)
    if rt is None or rt.is_main:
        print(render_text(e.diagnostic, sources, color=color_enabled(sys.stderr)), file=sys.stderr, flush=True)
    else:
        print(f"error (rank {rt.rank}): {e}", file=sys.stderr, flush=True)


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


def init_files(init_from: str | list[str]) -> list[str]:
    """`train.init_from` as the list of files it names (one file, or several loaded in order)."""
    return [init_from] if isinstance(init_from, str) else list(init_from)


def _init_from(session, logger) -> None:
    """Load `train.init_from` into the fresh model: the tensors it selects must fit exactly; model
    tensors it does not provide (a new head) keep their initialisation and are listed. Several files
    load in order into one set of tensors (a base model, then adapters trained on it)."""
    t = session.train
    files = init_files(t.init_from)
    shown = ", ".join(files)
    rename = dict(pair.split("=", 1) for pair in t.init_rename)
    weights: dict = {}
    for f in files:
        try:
            weights.update(read_weights(f))
        except (OSError, ValueError) as e:
            raise InitFromError(f"train.init_from: cannot read '{f}': {e}") from e
    check_init_globs(session.program, shown, weights)
    try:
        report = load_pretrained(session.model, weights, include=t.init_include, exclude=t.init_exclude,
                                 rename=rename, strict=False)
    except (OSError, ValueError) as e:
        raise InitFromError(f"train.init_from: cannot read '{shown}': {e}") from e
    if report.unexpected or report.mismatched:
        raise InitFromError(f"train.init_from: '{shown}' does not fit the model: {report.summary()} "
                            "(select tensors with train.init_include / init_exclude, rename with train.init_rename)")
    logger.info(f"initialised from {shown}: {report.summary()}")


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
    """The checkpoint to resume from; changes nothing on disk (see `_tidy_checkpoints`) but to put
    back one a kill left half-replaced."""
    ckpt.recover_renames()
    found = ckpt.latest_valid() if ckpt.has_any() else None
    if found is None and resume is True:
        raise UsageError(no_checkpoint_message(ckpt.root))
    if found is None and ckpt.has_any():
        notes.append(("warning", f"no usable checkpoint in {ckpt.root}; starting from scratch"))
    return found


def _tidy_checkpoints(ckpt: CheckpointManager, found: Found | None, notes: Notes) -> None:
    """Once the run starts (rank 0): remove partial writes, set aside what lies past `found`."""
    ckpt.clean_stale()
    for moved in ckpt.set_aside_after(found.step if found is not None else 0):
        notes.append(("info", f"set {moved.name[: -len('.skipped')]} aside as {moved}"))


class _NoteLog(list):
    """Collects what the trainer says before the run's logger exists (it is made only once the
    resume is known to work, so that a failed one writes nothing)."""

    def info(self, text: str) -> None:
        self.append(("info", text))

    def warning(self, text: str) -> None:
        self.append(("warning", text))


def _broadcast(rt: Runtime, value: object) -> object:
    if rt.distributed:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _lock_run_dir(rt: Runtime, run_dir: Path, stack: contextlib.ExitStack, notes: Notes) -> None:
    """Rank 0 takes the run directory's lock; every rank fails alike when another run holds it."""
    refused = None
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = RunLock(run_dir).acquire()
            stack.callback(lock.release)
            if lock.note:
                notes.append(("warning", lock.note))
        except OSError as e:  # RunDirLocked, or a directory that cannot be written
            refused = str(e)
    refused = _broadcast(rt, refused)
    if refused:
        raise UsageError(str(refused))


def train_main(
    path: str,
    overrides: Sequence[str] = (),
    output: str | None = None,
    resume: bool | None = None,
    extensions: Sequence[str] = (),
    allow_changes: bool = False,
) -> int:
    """Train the program in `path`. `resume`: True requires a checkpoint to continue from, None
    continues from one when the output directory has it, False starts afresh (setting the old
    checkpoints aside). `allow_changes`: resume even when the program changes a structural
    setting (see `l3m.train.resume_changes`).

    Nothing is written into the run directory until the run is known to start: a resume that
    fails (a checkpoint that does not fit, a refused change) leaves every file as it was. A
    SIGTERM or SIGINT stops after the current step with a checkpoint (`l3m.train.preempt`)."""
    rt: Runtime | None = None
    session: Session | None = None
    logger = RunLogger.null()
    code = 0
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    stack = contextlib.ExitStack()
    try:
        stop = stack.enter_context(handle_stop_signals())
        rt = init_runtime()
        stop.announce = rt.is_main
        compiled = _compile(path, overrides, rt, extensions)
        if isinstance(compiled, int):
            return compiled
        run_dir = Path(output) if output else default_run_dir(path)
        notes = _NoteLog()
        _lock_run_dir(rt, run_dir, stack, notes)
        session = build_session(compiled, rt, command="train")
        for line in unused_no_decay(compiled.program, [n for n, _ in session.named_parameters()]):
            notes.info(line)
        if rt.is_main and resume is False:
            _set_aside(run_dir, notes)
        _barrier(rt)
        ckpt = CheckpointManager(run_dir / "ckpt", keep=session.train.keep, rank=rt.rank, report=notes.warning)
        found = _choose_checkpoint(ckpt, resume, notes) if resume is not False else None
        record = jsonable(resolved(compiled.program, compiled.flow.model_order()))
        trainer = Trainer(session, run_dir, notes, ckpt)  # type: ignore[arg-type] - its logger comes below
        trainer.stop, trainer.program_record = stop, record
        changes = []
        if found is not None:
            changes = check_resume(found.path, run_dir, record, allow_changes)
            try:
                trainer.restore(found)
            except CheckpointMismatch as e:
                raise CheckpointMismatch(mismatch_message(found.path, e, changes)) from e
        elif session.train.init_from:
            _init_from(session, notes)
        # The run starts: from here on it writes into the run directory.
        if rt.is_main:
            _tidy_checkpoints(ckpt, found, notes)
            history = read_history(run_dir)
            write_program_record(run_dir, compiled.program, compiled.flow.model_order(), rt.world_size)
            append_history(run_dir, history, _history_entry(rt, found, changes, allow_changes))
            logger = RunLogger.for_run(run_dir, session.log, compiled.program.section("log"), session.train.steps,
                                       record, start_step=found.step if found is not None else 0)
        trainer.logger = logger
        for level, text in notes:
            (logger.warning if level == "warning" else logger.info)(text)
        if changes:
            logger.warning(f"resuming with {len(changes)} change(s) since the checkpoint: "
                           + "; ".join(f"{c.text()} [{c.kind}]" for c in changes))
        if found is not None:
            logger.info(f"resumed from {found.path} at step {trainer.step}")
        else:
            logger.info(f"training {Path(path).name} for {session.train.steps} steps into {run_dir}")
        with blame(compiled.program, session.model):  # a block, loss or metric that raises is named
            trainer.fit()
        if trainer.last_record:
            logger.info(f"done: step {trainer.step}, loss {trainer.last_record['loss']:.4f}")
        return 0
    except Preempted as e:
        code = e.exit_code
        if rt is None or rt.is_main:
            print(f"l3m: {e}", file=sys.stderr, flush=True)
        return code
    except IncompleteProgram as e:
        code = 1
        _print_diagnostics(rt, e.diagnostics, compiled.sources)
        return code
    except ProgramError as e:  # a mistake in the program found while building or running it
        code = 1
        _print_program_error(rt, e, compiled.sources)
        return code
    except (NonFiniteError, CheckpointWriteError) as e:
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
    except BaseException as e:  # a bug or an interrupt: the traceback is the report; wandb hears of the failure
        code = 1
        if rt is not None and rt.distributed and rank_errors.peer_lost(e):  # not this rank's fault: say whose
            print(f"error (rank {rt.rank}): {rank_errors.peer_lost_message(e)}", file=sys.stderr, flush=True)
            return code
        raise
    finally:
        if session is not None:
            session.close()
        logger.close(code)
        torch.use_deterministic_algorithms(deterministic_before)
        shutdown_runtime(rt)
        stack.close()  # the run directory's lock, the signal handlers


def _history_entry(rt: Runtime, found: Found | None, changes: list, allowed: bool) -> dict:
    """One start of the run for `run.json`'s history."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "world_size": rt.world_size,
        "resumed_from": None if found is None else {"step": found.step, "checkpoint": str(found.path)},
        "changes": [c.as_record() for c in changes],
        **({"allow_changes": True} if allowed else {}),
    }


def run_eval(path: str, overrides: Sequence[str], checkpoint: str, extensions: Sequence[str] = (),
             rt: Runtime | None = None) -> tuple[int, dict[str, dict]]:
    """Evaluate the weights in `checkpoint` (a run, checkpoint directory or weights file) on the
    program's evaluation sources: `(step of the checkpoint or -1, {source: results})`.

    Raises `ProgramErrors` when the program does not compile or cannot be evaluated."""
    rt = rt or Runtime(device=pick_device(0))  # this machine's GPU when it has one, as `l3m eval` picks
    compiled = _compile(path, overrides, rt, extensions)
    if isinstance(compiled, int):
        raise ProgramErrors(compiled)
    try:
        session = build_session(compiled, rt, command="eval")
    except IncompleteProgram as e:
        _print_diagnostics(rt, e.diagnostics, compiled.sources)
        raise ProgramErrors(1) from e
    except ProgramError as e:
        _print_program_error(rt, e, compiled.sources)
        raise ProgramErrors(1) from e
    source = Path(checkpoint)
    step = -1
    if source.is_file():
        report = load_pretrained(session.model, source, strict=True)
        if rt.is_main:
            MESSAGES.info(report.summary())
    else:
        ckpt = resolve_checkpoint(source, report=lambda t: _err(rt, t))
        load_weights(session, ckpt)
        step = int(read_state(ckpt).get("step", -1))
    try:
        with blame(compiled.program, session.model):
            return step, evaluate(session, max_batches=session.train.eval_steps)
    except ProgramError as e:
        _print_program_error(rt, e, compiled.sources)
        raise ProgramErrors(1) from e


class ProgramErrors(Exception):
    """The program was reported as not runnable (its diagnostics already printed); `code` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit code {code}")
        self.code = code


def eval_main(path: str, overrides: Sequence[str], checkpoint: str, extensions: Sequence[str] = ()) -> int:
    """Evaluate a trained run (`--checkpoint`: run directory, checkpoint or weights file) on every
    data source other than `train` (on `train` when there is no other) and print the results."""
    rt: Runtime | None = None
    console: ConsoleSink | None = None
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        rt = init_runtime()
        if rt.is_main:  # shows what the library logs meanwhile (l3m.train.logging); plain off a terminal
            console = ConsoleSink("rich", total_steps=0).attach()
        step, results = run_eval(path, overrides, checkpoint, extensions, rt)
        if console is not None:
            console.total = max(step, 0)
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
        if console is not None:
            console.close()
        torch.use_deterministic_algorithms(deterministic_before)
        shutdown_runtime(rt)


def export_main(run_dir_or_checkpoint: str, out_path: str, ema: bool = False) -> int:
    """Write the model weights of a run's newest complete checkpoint (or of one checkpoint
    directory) to `out_path` as a consolidated safetensors file (`ema`: the weight averages)."""
    try:
        ckpt = resolve_checkpoint(run_dir_or_checkpoint, report=lambda t: print(f"warning: {t}", file=sys.stderr))
        info = export_checkpoint(ckpt, out_path, ema=ema)
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

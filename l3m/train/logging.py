"""Where a run's numbers go: the console, `metrics.jsonl` in the run directory, wandb and TensorBoard.

Only rank 0 logs (`RunLogger.null()` elsewhere). `metrics.jsonl` holds one JSON object per
logged training step (`split = "train"`) and per evaluation (`split = <source name>`); it is
flushed line by line, so a killed run keeps what it logged, and a resumed run first drops the
lines after the step it resumes from.

Every log follows one contract (`Sink`): a run calls `resume(step, history)` with the step it
starts from (a checkpoint's, or 0) before its first record; after that each step appears once in
the log. `metrics.jsonl` is cut back to the step (the recomputed steps replace what an
interrupted run logged after it) and is then the history the other logs are made to match.
wandb keeps one run per run directory (its id in `wandb_id.txt`; a fresh start gets a new one).
Its history cannot be rewritten (online on the server, offline in the `.wandb` files of earlier
processes), so a resumed run reads back which steps it holds (the server's step online, the
offline files otherwise, see `wandb_offline`), sends again the steps up to the checkpoint that it
lacks (an offline process killed with SIGKILL saves little), and skips the steps it holds past
the checkpoint (wandb keeps the values the interrupted run logged for them, which an unchanged
resume repeats bit for bit). TensorBoard (`log.tensorboard`, `l3m.train.tensorboard`) implements
`Sink` the same way.

What a run says goes through Python's `logging`: messages on the `l3m.train` logger, one record
per metrics line on `l3m.train.metrics` (the record's dict as `l3m_record`). The run's
`ConsoleSink` is a handler of the `l3m` logger while the run lasts (rich on a terminal, plain
text on a pipe or file or with `NO_COLOR`, see `l3m.term`); a library user's handlers receive
the same records (`log.console = "none"` leaves the console to warnings and errors).

Files of the run directory that l3m reads back (`metrics.jsonl`, `wandb_id.txt`, wandb's offline
files) are opened only when they are regular files (a FIFO would block), read in bounded pieces,
and lines that l3m cannot have written are dropped with a note.

wandb is offline unless the program or the command line says `log { wandb = "online" }`;
`log.wandb = "disabled"` turns it off, and `WANDB_MODE=offline|disabled` may only turn it down.
Credentials and the server come only from wandb's own user-level mechanisms (`wandb login` /
netrc, `WANDB_API_KEY`, `WANDB_BASE_URL`, `~/.config/wandb/settings`): nothing in the project
folder is read for them. wandb itself would read `./wandb/settings` of the working directory
when it first loads its settings, so l3m has it load them from an empty directory.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from l3m.config import LogConfig
from l3m.term import color_enabled
from l3m.train.perf import human, human_bytes, human_time
from l3m.train.wandb_offline import held_steps

_FIXED = ("split", "step", "epoch", "time")
_PERF = ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu", "memory_bytes", "step_time_s", "eta_s")


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class UnusableLog(OSError):
    """A log file of the run directory that l3m will not open (not a regular file)."""


MAX_LINE = 1 << 20  # a metrics record is a few hundred bytes; a longer line is not one of l3m's


def _open_regular(path: Path, flags: int) -> int:
    """A descriptor of `path` opened with `flags`, refusing anything but a regular file (a FIFO
    would block the open or the read, a device would never end, a symlink may point anywhere)."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if path.is_symlink() or e.errno in (errno.ELOOP, errno.ENXIO):
            raise UnusableLog(f"{path} is not a regular file (a link, FIFO or device); move it away") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnusableLog(f"{path} is not a regular file (a FIFO, device or directory); move it away")
    return fd


def read_small(path: Path, limit: int = 256) -> str | None:
    """The text of a small regular file l3m wrote, or None when it is missing; `UnusableLog`
    when it is not a regular file, or is larger than `limit` bytes, or is not UTF-8 text."""
    if not os.path.lexists(path):
        return None
    fd = _open_regular(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnusableLog(f"{path} is larger than l3m ever writes it ({limit} bytes); move it away")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnusableLog(f"{path} is not text; move it away") from None


def _record_step(line: bytes) -> int | None:
    """The step of one metrics line, or None when it is not a record l3m wrote."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict):
        return None
    step = rec.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


class MetricsFile:
    """Append-only JSON lines, flushed per record (a `Sink`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()

    def _open(self):
        fd = _open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False) + "\n")
        self._f.flush()

    log = write

    def resume(self, step: int, history: list[dict[str, Any]] | None = None) -> str | None:
        self._f.close()
        dropped, unreadable = self.cut_after(self.path, step)
        self._f = self._open()
        notes = []
        if dropped:
            notes.append(f"dropped {dropped} metrics line(s) logged after step {step}")
        if unreadable:
            notes.append(f"dropped {unreadable} line(s) of {self.path} that are not metrics records "
                         "(cut short by a kill, or not written by l3m)")
        return "; ".join(notes) or None

    def close(self, exit_code: int = 0) -> None:
        self._f.close()

    @staticmethod
    def truncate_after(path: str | Path, step: int) -> int:
        """Drop records past `step` (left by a run that went on after its last checkpoint) and
        lines that are not records; how many lines were dropped."""
        return sum(MetricsFile.cut_after(path, step))

    @staticmethod
    def cut_after(path: str | Path, step: int) -> tuple[int, int]:
        """`truncate_after`, counting (records past `step`, lines that are not records). Reads
        line by line, at most `MAX_LINE` bytes of each, so no file makes it hang or fill memory."""
        p = Path(path)
        if not os.path.lexists(p):
            return 0, 0
        fd = _open_regular(p, os.O_RDONLY)
        tmp = p.with_name(p.name + ".tmp")
        dropped = unreadable = 0
        with os.fdopen(fd, "rb") as src, open(tmp, "wb") as out:
            while True:
                line = src.readline(MAX_LINE)
                if not line:
                    break
                if not line.endswith(b"\n") and len(line) == MAX_LINE:  # too long: skip the rest of it
                    while (more := src.readline(MAX_LINE)) and not more.endswith(b"\n"):
                        pass
                    unreadable += 1
                    continue
                if not line.strip():
                    continue
                at = _record_step(line)
                if at is None:  # a line cut short by a kill, or one l3m did not write
                    unreadable += 1
                elif at > step:
                    dropped += 1
                else:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
        tmp.replace(p)
        return dropped, unreadable


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# -- wandb ------------------------------------------------------------------------------------


def wandb_mode(log: LogConfig, explicit: Mapping[str, Any]) -> str:
    """The wandb mode: the program's or command line's `log.wandb`, else offline; `WANDB_MODE`
    can only lower it (to offline or disabled), never take a run online."""
    mode = log.wandb if "wandb" in explicit else "offline"
    env = os.environ.get("WANDB_MODE", "")
    if env == "disabled":
        return "disabled"
    if env in ("offline", "dryrun") and mode == "online":
        return "offline"
    return mode


def setup_wandb_outside_project(wandb: Any) -> None:
    """Let wandb load its global settings with an empty working directory, so it reads the user's
    (`~/.config/wandb/settings`, `WANDB_*`, netrc) and never a project folder's `./wandb/settings`,
    which could name another server or key. Once per process: later calls reuse those settings."""
    with tempfile.TemporaryDirectory(prefix="l3m-wandb-") as empty:
        here = os.getcwd()
        os.chdir(empty)
        try:
            wandb.setup()
        finally:
            os.chdir(here)


_WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def read_wandb_id(run_dir: Path) -> str | None:
    """The wandb run id kept in `wandb_id.txt`, None when there is none yet; `UnusableLog` when
    the file is not one l3m wrote (not a regular file, too long, odd characters)."""
    path = run_dir / "wandb_id.txt"
    text = read_small(path, 256)
    if text is None or not text.strip():
        return None
    if not _WANDB_ID.fullmatch(text.strip()):
        raise UnusableLog(f"{path} does not hold a wandb run id (letters, digits, '-' and '_'); move it away")
    return text.strip()


class WandbSink:
    """One wandb run per run directory, resumed by every later process of the run (a `Sink`)."""

    def __init__(self, run_dir: Path, log: LogConfig, explicit: Mapping[str, Any], config: Mapping[str, Any],
                 start_step: int = 0) -> None:
        """`start_step`: the checkpoint step a resumed run continues from; 0 starts a new wandb run
        (the history of an earlier one that got no checkpoint cannot be rewritten)."""
        self.run = None
        self.held: set[tuple[int, str]] = set()  # (step, split) the wandb run holds from an earlier process
        self.held_below = 0  # online: the server holds every step below this one
        mode = wandb_mode(log, explicit)
        if mode == "disabled":
            return
        run_id = read_wandb_id(run_dir)  # before importing wandb: a bad file is reported, never waited on
        if start_step == 0:
            run_id = None
        import wandb

        setup_wandb_outside_project(wandb)
        if not run_id:  # kept in the run directory, so a resumed run continues the same wandb run
            run_id = secrets.token_hex(6)
            _write_small(run_dir / "wandb_id.txt", run_id + "\n")
        # absolute: wandb's service process was started in a temporary folder (above) and would
        # resolve a relative `--output` there, losing every record
        wandb_dir = Path(os.environ.get("WANDB_DIR") or run_dir).absolute()
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.unknown = False
        if mode == "offline" and start_step > 0:  # what the earlier processes' files really hold
            held = held_steps(wandb_dir, run_id)
            self.unknown = held is None
            self.held = held or set()
        self.run = wandb.init(
            project=log.project,
            name=log.name or run_dir.name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(wandb_dir),
            config=dict(config),
            # wandb would run `git` in the working directory, and a shared folder's .git/config can name
            # programs for git to run (core.fsmonitor): never from l3m.
            settings=wandb.Settings(disable_git=True),
        )
        if mode == "online":  # a resumed online run starts past the last step the server holds
            self.held_below = int(getattr(self.run, "step", 0) or 0)

    def _holds(self, record: Mapping[str, Any]) -> bool:
        step = int(record["step"])
        return step < self.held_below or (step, str(record.get("split", "train"))) in self.held

    def resume(self, step: int, history: list[dict[str, Any]]) -> str | None:
        """Send again what the wandb run lacks of `history` (an offline process killed with SIGKILL
        saves little or nothing); later, skip the steps it already holds."""
        if self.run is None:
            return None
        if self.unknown:  # cannot tell what it holds: the checkpoint's steps are assumed sent
            self.held_below = step + 1
            return "cannot read wandb's offline files of this run; steps up to the checkpoint are not sent again"
        missing = [r for r in history if not self._holds(r)]
        for record in missing:
            self._send(record)
        later = sorted({s for s, _ in self.held if s > step} | set(range(step + 1, self.held_below)))
        notes = []
        if missing:
            notes.append(f"sent wandb {len({int(r['step']) for r in missing})} step(s) up to {step} "
                         "that the interrupted process had not saved")
        if later:
            notes.append(f"wandb already holds steps {min(later)}-{max(later)} from the interrupted run; "
                         "they are not sent again (wandb keeps their first values)")
        return "; ".join(notes) or None

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is not None and not self._holds(record):
            self._send(record)

    def _send(self, record: Mapping[str, Any]) -> None:
        split = record.get("split", "train")
        data = {f"{split}/{k}": v for k, v in record.items() if k not in _FIXED and isinstance(v, (int, float))}
        self.run.log(data, step=int(record["step"]))

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def _write_small(path: Path, text: str) -> None:
    """Replace `path` whole (a kill leaves the old or the new text, never a mix)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- the console ------------------------------------------------------------------------------


def format_record(record: Mapping[str, Any], total_steps: int) -> str:
    """One line: step, every loss term and metric, then learning rate and throughput."""
    split = record.get("split", "train")
    head = f"step {record['step']}/{total_steps}" if split == "train" else f"eval[{split}] @ step {record['step']}"
    parts = [head]
    for k, v in record.items():
        if k in _FIXED or k in _PERF or k == "samples" or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}")  # counts (data_errors) stay whole
    if split == "train":
        if record.get("lr") is not None:
            parts.append(f"lr {record['lr']:.2e}")
        if record.get("grad_norm") is not None:
            parts.append(f"gnorm {record['grad_norm']:.3f}")
        if record.get("samples_per_s") is not None:
            parts.append(f"{human(record['samples_per_s'])} samples/s")
        if record.get("tokens_per_s"):
            parts.append(f"{human(record['tokens_per_s'])} tok/s")
        if record.get("mfu") is not None:
            parts.append(f"mfu {100 * record['mfu']:.2f}%")
        if record.get("memory_bytes") is not None:
            parts.append(f"mem {human_bytes(record['memory_bytes'])}")
        if record.get("eta_s") is not None:
            parts.append(f"eta {human_time(record['eta_s'])}")
    elif record.get("samples") is not None:
        parts.append(f"({record['samples']} samples)")
    return " | ".join(parts)


MESSAGES = logging.getLogger("l3m.train")  # what a run says (rank 0): info, warnings, errors
RECORDS = logging.getLogger("l3m.train.metrics")  # one INFO line per metrics record (`.l3m_record`: the dict)
_LEVELS = ((logging.ERROR, "error"), (logging.WARNING, "warning"), (0, "info"))


class _ConsoleHandler(logging.Handler):
    """Shows the `l3m` loggers' messages and metrics records on a `ConsoleSink`."""

    def __init__(self, sink: ConsoleSink) -> None:
        super().__init__(logging.WARNING if sink.style == "none" else logging.INFO)
        self.sink = sink

    def emit(self, rec: logging.LogRecord) -> None:
        try:
            record = getattr(rec, "l3m_record", None)
            if record is not None:
                self.sink.record(record)
            else:
                self.sink.message(rec.getMessage(), next(name for lvl, name in _LEVELS if rec.levelno >= lvl))
        except Exception:  # noqa: BLE001 - logging's own policy for a handler that fails
            self.handleError(rec)


class ConsoleSink:
    """Rich (coloured, with a progress bar on a terminal), plain text, or nothing.

    Rich needs a terminal: on a pipe or a file, or with `NO_COLOR` set (`l3m.term`), it is plain
    text, without colour or progress-bar codes. While a run's `RunLogger` holds it, it is a
    handler of the `l3m` logger (`attach`): what the library logs there (`l3m.train` messages,
    `l3m.train.metrics` records) shows on it, and the same records reach any handler a library
    user adds (`log.console = "none"` leaves only warnings and errors to it)."""

    def __init__(self, style: str, total_steps: int) -> None:
        if style == "rich" and not color_enabled(sys.stdout):
            style = "plain"
        self.style, self.total = style, total_steps
        self.console = None
        self.progress = None
        self._task = None
        self._handler: _ConsoleHandler | None = None
        self._level = logging.NOTSET
        if style == "rich":
            from rich.console import Console

            self.console = Console(highlight=False, soft_wrap=True)
            if self.console.is_terminal:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                )

                self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                         TimeRemainingColumn(), console=self.console, transient=True)

    def start(self, step: int) -> None:
        if self.progress is not None:
            self.progress.start()
            self._task = self.progress.add_task("train", total=self.total, completed=step)

    def advance(self, step: int) -> None:
        if self.progress is not None and self._task is not None:
            self.progress.update(self._task, completed=step)

    def record(self, record: Mapping[str, Any]) -> None:
        if self.style == "none":
            return
        line = format_record(record, self.total)
        if self.console is not None:
            from rich.markup import escape

            color = "cyan" if record.get("split", "train") == "train" else "magenta"
            self.console.print(f"[{color}]{escape(line)}[/]")
        else:
            print(line, flush=True)

    def message(self, text: str, level: str = "info") -> None:
        if self.style == "none" and level == "info":
            return
        if self.console is not None:
            from rich.markup import escape

            color = {"info": "dim", "warning": "yellow", "error": "bold red"}[level]
            prefix = "" if level == "info" else f"{level}: "
            self.console.print(f"[{color}]{escape(prefix + text)}[/]")
        else:
            stream = sys.stdout if level == "info" else sys.stderr
            print(("" if level == "info" else f"{level}: ") + text, file=stream, flush=True)

    def attach(self) -> ConsoleSink:
        """Show the `l3m` loggers' messages (at INFO and above, unless the logger's level was set)."""
        if self._handler is None:
            root = logging.getLogger("l3m")
            self._handler, self._level = _ConsoleHandler(self), root.level
            root.addHandler(self._handler)
            if root.level == logging.NOTSET:
                root.setLevel(logging.INFO)
        return self

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self._handler is not None:
            root = logging.getLogger("l3m")
            root.removeHandler(self._handler)
            if root.level == logging.INFO and self._level == logging.NOTSET:
                root.setLevel(logging.NOTSET)
            self._handler = None


class Sink(Protocol):
    """What every log of a run implements (metrics.jsonl, wandb; TensorBoard or any other later)."""

    def log(self, record: dict[str, Any]) -> None:
        """One training or evaluation record (`split`, `step`, numbers)."""

    def resume(self, step: int, history: list[dict[str, Any]]) -> str | None:
        """Called before the first record of a run resumed from a checkpoint at `step` (0: a run
        that starts afresh), with `history`, the records up to `step` as `metrics.jsonl` holds them:
        after it, the log holds each of them once and no step appears twice. A note, or None."""

    def close(self, exit_code: int = 0) -> None:
        """The run ended (`exit_code` 0: it finished)."""


class RunLogger:
    """Everything a run reports, fanned out to the console, `metrics.jsonl` and wandb."""

    def __init__(self, console: ConsoleSink | None, metrics: MetricsFile | None, wandb: WandbSink | None,
                 others: list[Sink] | None = None) -> None:
        self.console, self.metrics, self.wandb = console, metrics, wandb
        self.sinks: list[Sink] = [x for x in (metrics, wandb) if x is not None] + list(others or [])
        if console is not None:
            console.attach()

    @classmethod
    def null(cls) -> RunLogger:
        return cls(None, None, None)

    @classmethod
    def for_run(cls, run_dir: Path, log: LogConfig, explicit: Mapping[str, Any], total_steps: int,
                config: Mapping[str, Any], start_step: int = 0) -> RunLogger:
        """The run's logger, every log resumed at `start_step` (the checkpoint's step, 0 for a run
        that starts afresh: what an earlier process logged is then dropped or, for wandb, left in
        its own wandb run)."""
        console = ConsoleSink(log.console, total_steps).attach()
        metrics = MetricsFile(run_dir / "metrics.jsonl")
        try:
            wandb = WandbSink(run_dir, log, explicit, config, start_step)
        except Exception as e:  # noqa: BLE001 - a broken wandb install must not stop training
            MESSAGES.warning(f"wandb is off: {type(e).__name__}: {e}" if not isinstance(e, UnusableLog)
                             else f"wandb is off: {e}")
            wandb = None
        others: list[Sink] = []
        if getattr(log, "tensorboard", False):
            from l3m.train.tensorboard import TensorBoardSink

            try:
                others.append(TensorBoardSink(run_dir))
            except (ImportError, OSError) as e:  # like wandb: a missing package does not stop training
                MESSAGES.warning(f"tensorboard is off: {e}")
        logger = cls(console, metrics, wandb, others)
        logger.resume(start_step)
        return logger

    def resume(self, step: int) -> None:
        notes = [self.metrics.resume(step, [])] if self.metrics else []  # first: the record of what was logged
        history = read_metrics(self.metrics.path) if self.metrics else []
        notes += [sink.resume(step, history) for sink in self.sinks if sink is not self.metrics]
        for note in notes:
            if note:
                self.info(note)

    def start(self, step: int) -> None:
        if self.console:
            self.console.start(step)

    def advance(self, step: int) -> None:
        if self.console:
            self.console.advance(step)

    def log(self, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        for sink in self.sinks:
            sink.log(record)
        if self.console:  # rank 0: through the `l3m.train.metrics` logger to the console and any handler
            RECORDS.info(format_record(record, self.console.total), extra={"l3m_record": record})

    def info(self, text: str) -> None:
        if self.console:
            MESSAGES.info(text)

    def warning(self, text: str) -> None:
        if self.console:
            MESSAGES.warning(text)

    def error(self, text: str) -> None:
        if self.console:
            MESSAGES.error(text)

    def close(self, exit_code: int = 0) -> None:
        if self.console:
            self.console.close()
        for sink in self.sinks:
            sink.close(exit_code)

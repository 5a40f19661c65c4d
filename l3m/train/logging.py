"""Where a run's numbers go: the console, `metrics.jsonl` in the run directory, and wandb.

Only rank 0 logs (`RunLogger.null()` elsewhere). `metrics.jsonl` holds one JSON object per
logged training step (`split = "train"`) and per evaluation (`split = <source name>`); it is
flushed line by line, so a killed run keeps what it logged, and a resumed run first drops the
lines after the step it resumes from.

wandb is offline unless the program or the command line says `log { wandb = "online" }`;
`log.wandb = "disabled"` turns it off, and `WANDB_MODE=offline|disabled` may only turn it down.
Credentials and the server come only from wandb's own user-level mechanisms (`wandb login` /
netrc, `WANDB_API_KEY`, `WANDB_BASE_URL`, `~/.config/wandb/settings`): nothing in the project
folder is read for them. wandb itself would read `./wandb/settings` of the working directory
when it first loads its settings, so l3m has it load them from an empty directory.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l3m.config import LogConfig
from l3m.train.perf import human, human_bytes, human_time

_FIXED = ("split", "step", "epoch", "time")
_PERF = ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu", "memory_bytes", "step_time_s", "eta_s")


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFile:
    """Append-only JSON lines, flushed per record."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def truncate_after(path: str | Path, step: int) -> int:
        """Drop records past `step` (left by a run that went on after its last checkpoint)."""
        p = Path(path)
        if not p.is_file():
            return 0
        kept, dropped = [], 0
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a kill
                dropped += 1
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) > step:
                dropped += 1
                continue
            kept.append(line)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(p)
        return dropped


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


class WandbSink:
    def __init__(self, run_dir: Path, log: LogConfig, explicit: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        self.run = None
        mode = wandb_mode(log, explicit)
        if mode == "disabled":
            return
        import wandb

        setup_wandb_outside_project(wandb)
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not run_id:  # kept in the run directory, so a resumed run continues the same wandb run
            run_id = secrets.token_hex(6)
            id_file.write_text(run_id + "\n")
        wandb_dir = Path(os.environ.get("WANDB_DIR") or run_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
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

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        split = record.get("split", "train")
        data = {f"{split}/{k}": v for k, v in record.items() if k not in _FIXED and isinstance(v, (int, float))}
        self.run.log(data, step=int(record["step"]))

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


# -- the console ------------------------------------------------------------------------------


def format_record(record: Mapping[str, Any], total_steps: int) -> str:
    """One line: step, every loss term and metric, then learning rate and throughput."""
    split = record.get("split", "train")
    head = f"step {record['step']}/{total_steps}" if split == "train" else f"eval[{split}] @ step {record['step']}"
    parts = [head]
    for k, v in record.items():
        if k in _FIXED or k in _PERF or k == "samples" or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k} {v:.4f}")
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


class ConsoleSink:
    """Rich (coloured, with a progress bar on a terminal), plain text, or nothing."""

    def __init__(self, style: str, total_steps: int) -> None:
        self.style, self.total = style, total_steps
        self.console = None
        self.progress = None
        self._task = None
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

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class RunLogger:
    """Everything a run reports, fanned out to the console, `metrics.jsonl` and wandb."""

    def __init__(self, console: ConsoleSink | None, metrics: MetricsFile | None, wandb: WandbSink | None) -> None:
        self.console, self.metrics, self.wandb = console, metrics, wandb

    @classmethod
    def null(cls) -> RunLogger:
        return cls(None, None, None)

    @classmethod
    def for_run(cls, run_dir: Path, log: LogConfig, explicit: Mapping[str, Any], total_steps: int,
                config: Mapping[str, Any]) -> RunLogger:
        console = ConsoleSink(log.console, total_steps)
        metrics = MetricsFile(run_dir / "metrics.jsonl")
        try:
            wandb = WandbSink(run_dir, log, explicit, config)
        except Exception as e:  # noqa: BLE001 - a broken wandb install must not stop training
            console.message(f"wandb is off: {type(e).__name__}: {e}", "warning")
            wandb = None
        return cls(console, metrics, wandb)

    def start(self, step: int) -> None:
        if self.console:
            self.console.start(step)

    def advance(self, step: int) -> None:
        if self.console:
            self.console.advance(step)

    def log(self, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        if self.metrics:
            self.metrics.write(record)
        if self.console:
            self.console.record(record)
        if self.wandb:
            self.wandb.log(record)

    def info(self, text: str) -> None:
        if self.console:
            self.console.message(text, "info")

    def warning(self, text: str) -> None:
        if self.console:
            self.console.message(text, "warning")

    def error(self, text: str) -> None:
        if self.console:
            self.console.message(text, "error")

    def close(self, exit_code: int = 0) -> None:
        if self.console:
            self.console.close()
        if self.metrics:
            self.metrics.close()
        if self.wandb:
            self.wandb.close(exit_code)

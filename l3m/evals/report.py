"""Where a suite's results go: a printed table, `--json`, and the run's own logs.

A run's logs get one record per suite, `{"split": "suite/<suite>", "step": <checkpoint step>, <numbers>}`:
a line in `metrics.jsonl` (the trainer's format, so `read_metrics` and the dashboards read it),
and, when the run logged there, the run's wandb run (`wandb_id.txt`) and TensorBoard folder, where
they show as `suite/<suite>/<metric>`, apart from the training run's own splits.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO


def record(suite: str, step: int, results: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The metrics line: the numbers only (descriptions such as the probed block stay in the table)."""
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"split": f"suite/{suite}", "step": max(step, 0), **numbers, "eval_seconds": round(seconds, 3),
            "time": time.time()}


def table(suite: str, results: Mapping[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    width = max(len(k) for k in results) if results else 0
    print(f"{suite}", file=stream)
    for k, v in results.items():
        value = f"{v:.4f}" if isinstance(v, float) else str(v)
        print(f"  {k:<{width}}  {value}", file=stream)


def as_json(suite: str, step: int, results: Mapping[str, Any]) -> str:
    return json.dumps({"suite": suite, "step": step, "results": dict(results)}, allow_nan=True)


def log_to_run(run_dir: Path, rec: dict[str, Any], log: Any = None) -> list[str]:
    """Append `rec` to the run's logs (`log`: the program's `log` settings); the notes to print
    (a log that could not be written)."""
    from l3m.train.logging import MetricsFile

    notes: list[str] = []
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    try:
        metrics.write(rec)
    finally:
        metrics.close()
    if log is not None and getattr(log, "tensorboard", False) and (run_dir / "tensorboard").is_dir():
        notes += _to_tensorboard(run_dir, rec)
    if log is not None and (run_dir / "wandb_id.txt").is_file() and getattr(log, "wandb", "disabled") != "disabled":
        notes += _to_wandb(run_dir, log, rec)
    return notes


def _to_tensorboard(run_dir: Path, rec: dict[str, Any]) -> list[str]:
    try:
        from l3m.train.tensorboard import TensorBoardSink

        sink = TensorBoardSink(run_dir)
        sink.log(rec)
        sink.close()
        return []
    except (ImportError, OSError) as e:
        return [f"tensorboard: not logged ({e})"]


def _to_wandb(run_dir: Path, log, rec: dict[str, Any]) -> list[str]:
    try:
        from l3m.train.logging import WandbSink

        sink = WandbSink(run_dir, log, {}, {}, start_step=max(int(rec["step"]), 1))
        sink.log(rec)
        sink.close()
        return []
    except Exception as e:  # noqa: BLE001 - a broken wandb install must not lose the results printed above
        return [f"wandb: not logged ({type(e).__name__}: {e})"]

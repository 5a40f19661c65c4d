"""TensorBoard event files of a run (`log { tensorboard = true }`), in `RUN_DIR/tensorboard/`.

A `Sink` (see `l3m.train.logging`): the scalars are those wandb gets, tagged `<split>/<name>`
(`train/loss`, `train/lr`, `train/grad_norm`, `train/samples_per_s`, `test/acc`, ...), at the
record's step and wall time. Rank 0 writes them, flushed at every record so a live TensorBoard
sees each step and a killed run keeps what it logged.

Resuming: TensorBoard has no way to take back a step an interrupted process logged after its
last checkpoint, and which of its events reached the disk depends on when it was killed; so a
resumed (or restarted) run removes the event files earlier processes wrote here and writes the
history again from `metrics.jsonl` (already cut back to the checkpoint's step): every step
appears once, with the values the JSON log holds. The `tensorboard` package is imported only
when the setting is on (`pip install 'l3m[tensorboard]'`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

FIXED = ("split", "step", "epoch", "time")
EVENTS = "events.out.tfevents."


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The tag -> value pairs of one record (numbers only; null stands for a non-finite value)."""
    split = record.get("split", "train")
    return {f"{split}/{k}": float(v) for k, v in record.items()
            if k not in FIXED and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """One event file per process in `run_dir/tensorboard`."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("log.tensorboard needs the tensorboard package: pip install 'l3m[tensorboard]' "
                              "(or pip install tensorboard)") from None
        self.dir = Path(run_dir) / "tensorboard"
        if self.dir.is_symlink():  # its event files are removed on resume: never through a link
            raise OSError(f"{self.dir} is a link, not a folder of the run; move it away")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._earlier = sorted(p for p in self.dir.iterdir()
                               if p.name.startswith(EVENTS) and (p.is_symlink() or p.is_file()))  # unlink: the link
        self.writer = SummaryWriter(log_dir=str(self.dir), flush_secs=30)

    def resume(self, step: int, history: list[dict[str, Any]]) -> str | None:
        """Replace what earlier processes wrote by `history` (the records up to `step`)."""
        for p in self._earlier:
            p.unlink(missing_ok=True)
        for record in history:
            self._add(record)
        self.writer.flush()
        if self._earlier and history:
            return f"rewrote the TensorBoard events of steps up to {step} from metrics.jsonl"
        return None

    def _add(self, record: Mapping[str, Any]) -> None:
        """One event holding every scalar of the record (what `add_scalar` writes, once per record)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        step, when = int(record["step"]), record.get("time")
        when = float(when) if isinstance(when, (int, float)) else None
        values = scalars(record)
        file_writer = getattr(self.writer, "_get_file_writer", None)  # one event: replays 8x faster
        if file_writer is None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step, walltime=when)
        elif values:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])
            file_writer().add_summary(summary, step, when)

    def log(self, record: Mapping[str, Any]) -> None:
        self._add(record)
        self.writer.flush()

    def close(self, exit_code: int = 0) -> None:
        self.writer.close()


def read_scalars(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of the event files in `log_dir` (TensorBoard's own reader; for tests
    and for comparing with `metrics.jsonl`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        if len(set(steps)) != len(steps):
            raise ValueError(f"{log_dir}: tag {tag} has a step twice")
        out[tag] = {e.step: e.value for e in events}
    return out


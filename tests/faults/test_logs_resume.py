"""Every log resumes cleanly: a run killed with SIGKILL and resumed leaves `metrics.jsonl` and its
wandb run (offline, read back from wandb's own files) with each step exactly once, the same values
(the resume is bit-identical), one wandb id; hostile files in the run directory give a clear message."""

from __future__ import annotations

import json
import os

import pytest
from fault_utils import l3m, write_program

from l3m.config import LogConfig
from l3m.train.logging import MetricsFile, RunLogger, UnusableLog, WandbSink, read_metrics, read_wandb_id

WANDB = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _train_steps(path) -> dict[int, float]:
    records = [r for r in read_metrics(path) if r["split"] == "train"]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.mark.slow
def test_kill_and_resume_every_log(tmp_path):
    pytest.importorskip("wandb")
    wandb_reader = pytest.importorskip("wandb_reader")
    program = write_program(tmp_path)
    env = {**WANDB, "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    run = tmp_path / "run"
    # a relative --output: wandb's service runs elsewhere and once wrote nothing for one
    args = ("train", str(program), "--output", "run", "log.wandb=offline")

    killed = l3m(*args, cwd=tmp_path, L3M_FAULT="kill,step=5", **env)  # checkpoints at 2 and 4
    assert killed.returncode == -9
    run_id = read_wandb_id(run)
    before = _train_steps(run / "metrics.jsonl")
    assert sorted(before) == [1, 2, 3, 4, 5]
    with open(run / "metrics.jsonl", "a") as f:  # lines l3m never writes: each is dropped with a note
        f.write('{"split": "train", "step": "7", "loss": 1.0}\n')
        f.write("garbage\n")
        f.write('{"split": "train", "step": 8, "pad": "' + "x" * (2 << 20) + '"}\n')

    resumed = l3m(*args, cwd=tmp_path, **env)
    assert resumed.returncode == 0, resumed.stderr
    assert "dropped 1 metrics line(s) logged after step 4" in resumed.stdout
    assert "dropped 3 line(s)" in resumed.stdout and "not metrics records" in resumed.stdout

    # metrics.jsonl: each step once; step 5 recomputed bit for bit
    expected = _train_steps(run / "metrics.jsonl")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert {s: expected[s] for s in before} == before
    # wandb: one run id for both processes, each step once over all its files, the same values
    assert read_wandb_id(run) == run_id
    files = wandb_reader.offline_runs(run, run_id)
    assert len(files) == 2, files
    rows = [row for f in files for row in wandb_reader.history(f)]
    steps = [row["_step"] for row in rows]
    assert sorted(steps) == sorted(set(steps)) == [1, 2, 3, 4, 5, 6], steps
    assert {row["_step"]: row["train/loss"] for row in rows} == expected


def test_hostile_metrics_lines_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [{"split": "train", "step": s, "loss": 1.0} for s in (1, 2, 3)]
    lines = [json.dumps(r) for r in good] + [
        '{"split": "train", "step": "two"}', "[1, 2]", "\x00\xff", "{" * 100000, '{"step": -1}',
        '{"split": "train", "step": 2, "pad": "' + "y" * (3 << 20) + '"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    assert MetricsFile.cut_after(path, 2) == (1, 6)
    assert read_metrics(path) == good[:2]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_odd_files_are_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "wandb_id.txt")
    with pytest.raises(UnusableLog, match="not a regular file"):
        read_wandb_id(tmp_path)  # would block forever if it opened the FIFO for reading
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(UnusableLog, match="not a regular file"):
        MetricsFile(tmp_path / "metrics.jsonl")
    with pytest.raises(UnusableLog, match="not a regular file"):
        MetricsFile.cut_after(tmp_path / "metrics.jsonl", 1)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "wandb_id.txt").write_text("../../etc/passwd\n")
    with pytest.raises(UnusableLog, match="does not hold a wandb run id"):
        read_wandb_id(odd)
    (odd / "wandb_id.txt").write_text("a" * 5000)
    with pytest.raises(UnusableLog, match="larger than"):
        read_wandb_id(odd)
    (odd / "wandb_id.txt").unlink()
    (odd / "wandb_id.txt").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnusableLog, match="not a regular file"):
        read_wandb_id(odd)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_resume_with_a_fifo_in_the_run_directory(tmp_path, capsys):
    """A FIFO as wandb_id.txt turns wandb off with a warning when the run's logs resume; as
    metrics.jsonl it is an error of the CLI that names the file (exit 2). Neither waits on the
    FIFO (a hang would hit the subprocess timeout)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 2.0}\n'
                                       '{"split": "train", "step": 2, "loss": 1.0}\n')
    os.mkfifo(run / "wandb_id.txt")
    logger = RunLogger.for_run(run, LogConfig(wandb="offline", console="plain"), {"wandb": "offline"}, 4, {},
                               start_step=1)
    logger.close()
    err = capsys.readouterr().err
    assert "wandb is off:" in err and "wandb_id.txt is not a regular file" in err
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]

    program = write_program(tmp_path)
    (tmp_path / "fifo-run").mkdir()
    os.mkfifo(tmp_path / "fifo-run" / "metrics.jsonl")
    proc = l3m("train", str(program), "--output", str(tmp_path / "fifo-run"), cwd=tmp_path, timeout=90)
    assert proc.returncode == 2
    assert "metrics.jsonl is not a regular file" in proc.stderr and "Traceback" not in proc.stderr


class _FakeRun:
    def __init__(self) -> None:
        self.sent: list[tuple[int, dict]] = []

    def log(self, data: dict, step: int) -> None:
        self.sent.append((step, data))


def _sink(held=(), held_below: int = 0) -> WandbSink:
    sink = WandbSink.__new__(WandbSink)  # the wandb run itself faked: only what l3m hands it is checked
    sink.run, sink.held, sink.held_below, sink.unknown = _FakeRun(), set(held), held_below, False
    return sink


def test_wandb_gets_each_step_once_whatever_it_held():
    history = [{"split": "train", "step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
    history.insert(2, {"split": "val", "step": 2, "loss": 0.5})
    # offline, the interrupted process saved steps 1-2 and 5 (a block written out), then was killed;
    # the run resumes from the checkpoint at step 4
    sink = _sink(held={(1, "train"), (2, "train"), (5, "train")})
    note = sink.resume(4, history)
    assert [(s, sorted(d)) for s, d in sink.run.sent] == [(2, ["val/loss"]), (3, ["train/loss"]), (4, ["train/loss"])]
    assert "already holds steps 5-5" in note
    for step in (5, 6):
        sink.log({"split": "train", "step": step, "loss": 0.1})
    sink.log({"split": "val", "step": 6, "loss": 0.2})
    assert [s for s, _ in sink.run.sent] == [2, 3, 4, 6, 6]
    # online, the server holds steps below 4: nothing up to the checkpoint is sent again
    sink = _sink(held_below=4)
    assert sink.resume(3, [r for r in history if r["step"] <= 3]) is None
    sink.log({"split": "train", "step": 4, "loss": 0.1})
    assert [s for s, _ in sink.run.sent] == [4]

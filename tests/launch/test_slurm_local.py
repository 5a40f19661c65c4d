"""The SLURM job's code path on this machine, with submitit's LocalExecutor: a tiny training runs to
completion, and one stopped by SIGTERM saves a checkpoint, requeues itself and resumes from it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from l3m.launch.slurm import TrainJob, submit_local

HERE = Path(__file__).resolve().parent

PROGRAM = """l3m 1
data {{ train: TextBytes(root = "{corpus}", seq_len = 8, batch_size = 2, max_bytes = 0) -> tokens, targets }}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }}
  trunk        {{ blocks: Transformer(dim = 16, depth = 1, heads = 2, causal = true) x -> x }}
  head         {{ lm: LMHead(dim = 16, vocab = 256) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 3e-3)
train {{ steps = 3, log_every = 1, checkpoint_every = 3, keep = 0 }}
log {{ wandb = "disabled", console = "plain" }}
"""

pytestmark = pytest.mark.slow


@pytest.fixture
def program(tmp_path, monkeypatch):
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("L3M_FAULT", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    path = tmp_path / "tiny.l3m"
    path.write_text(PROGRAM.format(corpus=tmp_path / "corpus.txt"))
    return path


def finished(job, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.done(), f"the local job did not finish in {seconds} s"
    return job.results()


def steps_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def logs(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*.out")) + sorted(folder.rglob("*.err")))


def test_local_job_trains_to_the_end(program, tmp_path):
    run = tmp_path / "run"
    job = TrainJob(str(program), ["train.steps=3"], str(run), str(tmp_path))
    assert finished(submit_local(job, tmp_path / "submitit")) == [0]
    assert steps_logged(run) == [1, 2, 3]
    assert (run / "ckpt" / "step_000003").is_dir()


def test_preempted_job_requeues_and_resumes(program, tmp_path):
    from stop_once import StopOnceJob

    run, folder = tmp_path / "run", tmp_path / "submitit"
    job = StopOnceJob(str(program), ["train.steps=5"], str(run), str(tmp_path), marker=str(tmp_path / "stopped"))
    assert finished(submit_local(job, folder)) == [0]
    text = logs(folder)
    assert "stopped by SIGTERM at step 2; saved checkpoint" in text, text
    assert "Requeued job" in text, text
    assert f"resumed from {run}/ckpt/step_000002 at step 2" in text, text
    assert (run / "ckpt" / "step_000002").is_dir() and (run / "ckpt" / "step_000005").is_dir()
    assert steps_logged(run) == [1, 2, 3, 4, 5]


@pytest.mark.dist
def test_two_tasks_are_two_ranks(program, tmp_path):
    """One task per rank, as on SLURM: RANK/WORLD_SIZE/MASTER_ADDR come from submitit's job environment."""
    run = tmp_path / "run"
    job = TrainJob(str(program), ["train.steps=2"], str(run), str(tmp_path))
    assert finished(submit_local(job, tmp_path / "submitit", tasks=2)) == [0, 0]
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert (run / "ckpt" / "step_000002").is_dir()

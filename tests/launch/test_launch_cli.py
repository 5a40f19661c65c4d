"""`l3m launch` and `l3m submit --slurm` from the command line: dry runs, and bad input in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from l3m.cli import main

ROOT = Path(__file__).resolve().parents[2]
LLM = str(ROOT / "examples" / "llm_bytes.l3m")
SUBMIT = ["submit", "--slurm", LLM, "--nodes", "2", "--gpus-per-node", "4", "--time", "01:30:00",
          "--partition", "gpu", "--dry-run"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_NODELIST",
                 "SLURM_JOB_ID", "SLURM_NODEID", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def test_launch_dry_run_prints_the_command(capsys):
    code, out, _ = run(capsys, "launch", LLM, "train.steps=3", "--nnodes", "2", "--nproc-per-node", "4",
                       "--rdzv-endpoint", "head:29400", "--rdzv-id", "exp", "-o", "runs/a", "--dry-run")
    assert code == 0
    words = out.split()
    assert Path(words[0]).name == "torchrun"
    assert words[1:] == ["--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29400",
                         "--rdzv-id=exp", "--max-restarts=0", "-m", "l3m", "train", LLM, "train.steps=3",
                         "--output", "runs/a"]


def test_launch_runs_what_it_prints(capsys, monkeypatch):
    import subprocess

    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    code, out, _ = run(capsys, "launch", LLM, "--nproc-per-node", "2")
    assert code == 0 and len(ran) == 1 and " ".join(ran[0]) == out.strip()


def test_dry_run_sbatch_script_line_by_line(capsys, tmp_path):
    code, out, err = run(capsys, *SUBMIT, "--account", "proj", "-o", "runs/big", "train.steps=3")
    assert code == 0
    script = (tmp_path / "l3m-llm_bytes.sbatch").read_text()
    assert out == script
    logs = tmp_path / "runs" / "big" / "slurm"
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line for line in lines if line.startswith("#SBATCH")]
    for expected in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=90", "--partition=gpu",
                     "--account=proj", "--job-name=l3m-llm_bytes", "--signal=TERM@120", "--requeue",
                     "--open-mode=append", f"--output={logs}/%j_0_log.out"):
        assert f"#SBATCH {expected}" in sbatch, expected
    assert not any(line.startswith("#SBATCH --error") for line in sbatch)
    assert "export SUBMITIT_PREEMPT_SIGNAL=TERM" in lines
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1
    assert srun[0].startswith(f"srun --unbuffered --output {logs}/%j_%t_log.out ")
    assert srun[0].endswith(f"-u -m submitit.core._submit {logs}")
    assert lines.index("export SUBMITIT_PREEMPT_SIGNAL=TERM") < lines.index(srun[0])
    assert err == [f"wrote l3m-llm_bytes.sbatch (not submitted; logs would go to {logs})"]


def test_dry_run_is_the_script_submitit_submits(capsys, tmp_path, monkeypatch):
    """The same text SlurmExecutor writes at submission (it needs `srun`: pretend there is one)."""
    import submitit

    from l3m.launch.slurm import SlurmSpec, sbatch_parameters

    assert run(capsys, *SUBMIT, "--setup", "module load cuda")[0] == 0
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    folder = tmp_path / "runs" / "llm_bytes" / "slurm"
    executor = submitit.SlurmExecutor(folder=folder)
    spec = SlurmSpec(2, 4, 90, "gpu", job_name="l3m-llm_bytes", setup=["module load cuda"])
    executor.update_parameters(**sbatch_parameters(spec))
    submitted = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    assert (tmp_path / "l3m-llm_bytes.sbatch").read_text() == submitted


def test_submit_without_srun_says_so(capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *_: None)
    code, _, err = run(capsys, *[a for a in SUBMIT if a != "--dry-run"])
    assert code == 2 and len(err) == 1 and "srun" in err[0] and "--dry-run" in err[0]


@pytest.mark.parametrize(("argv", "words"), [
    (["launch", "nosuch.l3m", "--dry-run"], "no such file: nosuch.l3m"),
    (["launch", LLM, "--nproc-per-node", "3", "--dry-run"], "does not fit 3 process(es)"),
    (["launch", LLM, "--nnodes", "2", "--dry-run"], "rendezvous endpoint"),
    (["launch", "--dry-run"], "exactly one .l3m file"),
    (["submit", "--slurm", "nosuch.l3m", "--nodes", "1", "--gpus-per-node", "1", "--time", "1:00:00",
      "--partition", "p", "--dry-run"], "no such file"),
    (["submit", "--slurm", LLM, "--nodes", "1", "--gpus-per-node", "3", "--time", "1:00:00", "--partition", "p",
      "--dry-run"], "does not fit 3 process(es)"),
    ([a for a in SUBMIT if a not in ("--time", "01:30:00")], "--time is required"),
    ([a for a in SUBMIT if a not in ("--partition", "gpu")], "--partition is required"),
    ([a if a != "01:30:00" else "90" for a in SUBMIT], "--time must be HH:MM:SS"),
    ([a if a != "01:30:00" else "1:75:00" for a in SUBMIT], "below 60"),
    ([a if a != "01:30:00" else "12:00" for a in SUBMIT], "--time must be HH:MM:SS"),
    ([a for a in SUBMIT if a != "--slurm"], "--slurm"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err) == 1 and words in err[0], err


def test_a_file_with_errors_exits_1(capsys, tmp_path):
    bad = tmp_path / "bad.l3m"
    bad.write_text(Path(LLM).read_text().replace("depth = 2", "depth = nope"))
    code, _, err = run(capsys, "launch", str(bad), "--dry-run")
    assert code == 1 and "error[" in "\n".join(err) and err[-1].startswith("l3m launch: ")
    assert not list(tmp_path.glob("*.sbatch"))


@pytest.mark.parametrize(("text", "minutes"), [("01:30:00", 90), ("0:00:30", 1), ("2-00:00:00", 2880)])
def test_time_limits(text, minutes):
    from l3m.launch.slurm import parse_time

    assert parse_time(text) == minutes

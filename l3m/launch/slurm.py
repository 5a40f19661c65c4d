"""`l3m submit --slurm`: one SLURM job that trains a program, stops on SIGTERM and requeues itself.

The job is a submitit job: `sbatch` runs one task per GPU (`srun`), each task is one rank of
`l3m train` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from submitit's view of the SLURM
allocation), with no torchrun in between: torchrun would send its workers a second SIGTERM when SLURM
signals it, and a second signal aborts `l3m train` before its checkpoint (l3m/train/preempt.py).

Preemption and time limits: submitit asks SLURM for a signal `signal_delay_s` before the limit; l3m makes
that signal SIGTERM (`--signal=TERM@S`, SUBMITIT_PREEMPT_SIGNAL=TERM), the signal SLURM also sends on
preemption. Every rank gets it, finishes its step, saves a checkpoint and returns 143. Then rank 0 hands
the signal to submitit's own handler, which requeues the job (`scontrol requeue`); the requeued job runs
the same command, and `l3m train` resumes from the latest checkpoint of the run directory.

The script `--dry-run` writes is the one submitit would submit (made by the same submitit function from
the same parameters), except that a submitted job also has the pickled job next to its logs.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from l3m.launch.torchrun import LaunchError

PREEMPT_SIGNAL = "TERM"
PREEMPT_ENV = "SUBMITIT_PREEMPT_SIGNAL"
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM


def parse_time(text: str) -> int:
    """SLURM's `[D-]HH:MM:SS` as whole minutes, rounded up: submitit's `time`. (Not `MM:SS` or `HH:MM`,
    which SLURM and people read differently.)"""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", text.strip())
    if not match:
        raise LaunchError(f"--time must be HH:MM:SS (or D-HH:MM:SS), got {text!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    if minutes >= 60 or seconds >= 60:
        raise LaunchError(f"--time must be HH:MM:SS with minutes and seconds below 60, got {text!r}")
    total = math.ceil((((days * 24 + hours) * 60 + minutes) * 60 + seconds) / 60)
    if total < 1:
        raise LaunchError(f"--time must be at least one minute, got {text!r}")
    return total


@dataclass
class SlurmSpec:
    """What `l3m submit --slurm` asks SLURM for."""

    nodes: int
    gpus_per_node: int
    minutes: int
    partition: str
    account: str | None = None
    job_name: str = "l3m"
    signal_delay_s: int = 120  # time to finish a step and write a checkpoint before the limit
    max_requeues: int = 20  # time-limit requeues (preemptions do not count)
    setup: list[str] = field(default_factory=list)  # shell lines before srun (modules, venv)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def sbatch_parameters(spec: SlurmSpec) -> dict:
    """The parameters of submitit's SlurmExecutor (and of its sbatch writer) for `spec`."""
    params: dict = {
        "nodes": spec.nodes, "ntasks_per_node": spec.gpus_per_node, "gpus_per_node": spec.gpus_per_node,
        "time": spec.minutes, "partition": spec.partition, "job_name": spec.job_name,
        "signal_delay_s": spec.signal_delay_s, "stderr_to_stdout": True,
        "setup": [f"export {PREEMPT_ENV}={PREEMPT_SIGNAL}", *spec.setup],
        # TERM, not submitit's USR2: the signal `l3m train` saves a checkpoint on, as on preemption
        "additional_parameters": {"signal": f"{PREEMPT_SIGNAL}@{spec.signal_delay_s}", "requeue": True},
    }
    if spec.account:
        params["account"] = spec.account
    return params


def submitit_command(folder: Path) -> str:
    """The line each task runs: submitit's runner, which loads the job pickled into `folder`."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(spec: SlurmSpec, folder: Path) -> str:
    """The sbatch script submitit writes for `spec` (what `--dry-run` shows)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's writer; SlurmExecutor needs `srun`

    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **sbatch_parameters(spec))


@dataclass
class TrainJob:
    """One rank of `l3m train FILE OVERRIDES --output RUN_DIR`, run in the submitit task's process.

    A dataclass of paths and strings, so the pickle submitit writes holds no state: a requeued job runs
    the same thing again and `l3m train` resumes from the run directory.
    """

    file: str
    overrides: list[str]
    run_dir: str
    workdir: str
    extensions: list[str] = field(default_factory=list)
    train_flags: list[str] = field(default_factory=list)  # e.g. --allow-changes

    def argv(self) -> list[str]:
        ext = [a for m in self.extensions for a in ("--extension", m)]
        return ["train", self.file, *self.overrides, "--output", self.run_dir, *ext, *self.train_flags]

    def __call__(self) -> int:
        import submitit

        from l3m.cli import main

        os.chdir(self.workdir)
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one task per rank: torch.distributed's env:// variables, from SLURM's
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        requeue = signal.getsignal(signal.SIGTERM)  # submitit's: checkpoint() and requeue (PREEMPT_ENV)
        code = main(self.argv())
        if code == STOPPED_BY_SIGTERM:
            if getattr(requeue, "__name__", "") != "checkpoint_and_try_requeue":
                raise RuntimeError(f"stopped by SIGTERM after a checkpoint, but not requeued: {PREEMPT_ENV} was "
                                   f"not {PREEMPT_SIGNAL} when the job started; submit it again to resume")
            requeue(signal.SIGTERM, None)  # rank 0 requeues and exits; the other ranks return
            return code
        if code != 0:
            raise RuntimeError(f"l3m train exited with code {code} (rank {env.global_rank}); see the job's log")
        return code

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on the stop signal: the checkpoint is l3m's, so resubmit the same job."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def submit(job: TrainJob, spec: SlurmSpec, folder: Path):
    """Submit `job` with sbatch (needs `srun`/`sbatch`: run on the cluster's login node). Returns the job."""
    os.environ[PREEMPT_ENV] = PREEMPT_SIGNAL  # the job inherits the submitting environment, too
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=spec.max_requeues)
    except RuntimeError as e:
        raise LaunchError(f"cannot submit: {e} (use --dry-run to write the script)") from None
    executor.update_parameters(**sbatch_parameters(spec))
    return executor.submit(job)


def submit_local(job: TrainJob, folder: Path, tasks: int = 1, minutes: int = 10, signal_delay_s: int = 30,
                 max_requeues: int = 3):
    """The same job on this machine, with submitit's LocalExecutor (tests, and trying a job before a cluster)."""
    os.environ[PREEMPT_ENV] = PREEMPT_SIGNAL
    import submitit

    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeues)
    executor.update_parameters(timeout_min=minutes, tasks_per_node=tasks, nodes=1, signal_delay_s=signal_delay_s)
    return executor.submit(job)

"""A TrainJob that sends itself SIGTERM at the start of step 2 on its first attempt only: a preemption
at a known step, for the requeue test (imported by submitit's task process from PYTHONPATH)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from l3m.launch.slurm import TrainJob


@dataclass
class StopOnceJob(TrainJob):
    marker: str = ""
    stop_at: int = 2

    def __call__(self) -> int:
        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            from l3m.train import engine

            step = engine.Trainer.train_step

            def stopping_step(trainer):
                if trainer.step == self.stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return step(trainer)

            engine.Trainer.train_step = stopping_step
        return super().__call__()

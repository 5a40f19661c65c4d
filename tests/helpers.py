"""Paths shared by tests (importable because pytest puts tests/ on sys.path)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "models").glob("*.l3m")) + sorted((ROOT / "examples").glob("*.l3m"))
EXAMPLES = sorted((ROOT / "examples").glob("*.l3m"))


def dist_env() -> dict[str, str]:
    """The environment of a `torchrun` child: this checkout importable, the CPU, one thread, no wandb, a
    fixed MFU reference and a short collective timeout (a lost rank fails the test, not the suite)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(L3M_DEVICE="cpu", WANDB_MODE="disabled", OMP_NUM_THREADS="1", L3M_PEAK_FLOPS="1e11",
               L3M_DIST_TIMEOUT="60")
    return env

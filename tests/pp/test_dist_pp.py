"""Pipeline parallelism end to end under torchrun (gloo, CPU): `mesh.pp = 2` trains the losses and
weights of one process on the same global batch (GPipe, 1F1B, interleaved 1F1B; an LLM and a CLIP
whose cut several keys cross), with FSDP on 4 ranks, and checkpoints move between pp and non-pp meshes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import dist_env
from pp_programs import ROOT, write_programs

from l3m.train.checkpoint import load_model_tensors
from l3m.train.logging import read_metrics

pytestmark = [pytest.mark.dist, pytest.mark.slow]

TOL = 1e-5  # losses
# Weights: Adam's normalised update turns summation-order differences in near-zero gradients (micro-batch
# gradients accumulate in another order, the norm is reduced over ranks) into up to ~lr per step.
WEIGHT_TOL = 1e-4
WORKER = Path(__file__).with_name("pp_worker.py")


def _run(args: list[str], nproc: int = 1, timeout: float = 300) -> None:
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    proc = subprocess.run([*launcher, *args], cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _train(program: Path, out: Path, *overrides: str) -> Path:
    _run(["-m", "l3m", "train", str(program), "--output", str(out), *overrides])
    return out


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"}


def weights(run: Path, step: int = 5) -> dict[str, torch.Tensor]:
    return load_model_tensors(run / "ckpt" / f"step_{step:06d}")


def evals(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "eval"]


def assert_same_run(run: Path, reference: Path) -> None:
    if evals(reference):  # the LLM's evaluation at the end (pipelined: stage by stage)
        assert abs(evals(run)[-1] - evals(reference)[-1]) < TOL, (run.name, evals(run), evals(reference))
    got, want = losses(run), losses(reference)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5], (got, want)
    assert max(abs(got[s] - want[s]) for s in want) < TOL, (run.name, got, want)
    a, b = weights(run), weights(reference)
    assert sorted(a) == sorted(b)  # a pp checkpoint names every tensor of the model
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < WEIGHT_TOL, run.name


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Programs and their single-process runs (the reference), and a single-process checkpoint at step 3."""
    root = tmp_path_factory.mktemp("pp")
    llm, clip = write_programs(root)
    refs = {"llm": _train(llm, root / "single_llm"), "clip": _train(clip, root / "single_clip")}
    partial = _train(llm, root / "single_llm_3", "train.steps=3")
    shutil.copytree(partial, root / "runs" / "from_single")  # the pp = 2 run resumes it
    return root, llm, clip, refs


def test_pp2_matches_one_process(single):
    root, llm, clip, refs = single
    out = root / "runs"
    _run([str(WORKER), str(out), str(llm), str(clip), "pp2"], nproc=2)
    for schedule in ("gpipe", "1f1b", "interleaved_1f1b"):
        assert_same_run(out / f"llm_{schedule}", refs["llm"])
    assert_same_run(out / "clip_cost", refs["clip"])
    assert_same_run(out / "clip_text_split", refs["clip"])
    # single process (steps 1-3) -> pp = 2 (4-5), and pp = 2 (1-3) -> pp = 1 with FSDP (4-5)
    assert_same_run(out / "from_single", refs["llm"])
    assert_same_run(out / "to_fsdp", refs["llm"])


def test_pp2_with_fsdp_on_four_ranks(single):
    root, llm, clip, refs = single
    out = root / "runs4"
    _run([str(WORKER), str(out), str(llm), str(clip), "pp2_dp2"], nproc=4)
    assert_same_run(out / "llm_pp2_dp2", refs["llm"])
    assert_same_run(out / "llm_pp2_rep2", refs["llm"])

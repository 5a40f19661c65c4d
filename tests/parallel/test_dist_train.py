"""End to end under torchrun (2 processes, gloo, CPU): `l3m train` on every kind of mesh gives the
losses and weights of one process on the same global batch, checkpoints move between meshes, and
a failing rank ends the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from dist_utils import run, write_program

from l3m.train.checkpoint import load_model_tensors
from l3m.train.logging import read_metrics

pytestmark = pytest.mark.dist

# Each mesh on 2 processes; the file's batch_size is the global batch (8 samples per step, as 2
# micro-batches per rank): data-parallel ranks read half of it each, tensor- and context-parallel
# ranks all read the whole of it.
MESHES = {
    "dp_shard": ["mesh.dp_shard=2", "train.activation_checkpointing=selective"],
    "dp_replicate": ["mesh.dp_replicate=2", "train.activation_checkpointing=full"],
    "tp": ["mesh.tp=2", "vp=true"],
    "cp": ["mesh.cp=2"],
}


class Runs:
    """Training runs of the test program, each done once per test module and cached by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.program = write_program(root)
        self.done: dict[str, Path] = {}

    def train(self, name: str, overrides: list[str], nproc: int, out: Path | None = None) -> Path:
        out = out or self.root / name
        proc = run(["-m", "l3m", "train", str(self.program), "--output", str(out), *overrides], nproc=nproc)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return out

    def get(self, name: str) -> Path:
        if name not in self.done:
            if name == "single":
                self.done[name] = self.train(name, [], nproc=1)
            else:
                self.done[name] = self.train(name, MESHES[name], nproc=2)
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("dist"))


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"}


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """A checkpoint's model tensors loaded whole on this one process (DCP reshards them)."""
    return load_model_tensors(run_dir / "ckpt" / f"step_{step:06d}")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Weights of two runs that differ only in the order of floating-point sums (AdamW magnifies
    such differences on near-zero gradients, hence the tolerance of a few percent of one step)."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("mesh", list(MESHES))
def test_mesh_trains_like_one_process(runs, mesh):
    ref, got = losses(runs.get("single")), losses(runs.get(mesh))
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4]
    assert ref[4] < ref[1]  # it trains
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), f"step {step}: {got[step]} vs {ref[step]}"
    assert_same_weights(weights(runs.get("single"), 4), weights(runs.get(mesh), 4))


@pytest.mark.parametrize("saved, resumed", [("dp_shard", "dp_replicate"), ("tp", "single")])
def test_checkpoint_resumes_on_another_mesh(runs, tmp_path, saved, resumed):
    source = runs.get(saved)
    # Saved sharded, loaded whole on one process: the weights of the one-process run at that step.
    assert_same_weights(weights(source, 2), weights(runs.get("single"), 2))
    out = tmp_path / f"{saved}_to_{resumed}"
    shutil.copytree(source / "ckpt" / "step_000002", out / "ckpt" / "step_000002")
    if resumed == "single":
        runs.train("resume", [], nproc=1, out=out)
    else:
        runs.train("resume", MESHES[resumed], nproc=2, out=out)
    ref = losses(runs.get("single"))
    got = losses(out)
    assert sorted(got) == [3, 4]  # resumed after step 2, with model, optimizer and data position
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)
    assert_same_weights(weights(out, 4), weights(runs.get("single"), 4))


def test_checkpoint_round_trip_across_meshes_is_exact(runs, tmp_path):
    """Saved with tensor parallelism, loaded into FSDP and saved again: every tensor (weights and
    optimizer state) comes back bit for bit."""
    source = runs.get("tp") / "ckpt" / "step_000002"
    out = tmp_path / "roundtrip"
    proc = run(["tests/parallel/worker.py", "roundtrip", str(runs.program), str(source), str(out),
                *MESHES["dp_shard"]], nproc=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    before = load_model_tensors(source, prefix="")
    after = load_model_tensors(out / "ckpt" / "step_000002", prefix="")
    assert before.keys() == after.keys()
    assert any(k.startswith("optim/") for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_failing_rank_exits_nonzero_without_hanging():
    proc = run(["tests/parallel/worker.py", "fail"], nproc=2, timeout=120)  # a hang would time out
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stdout + proc.stderr


def test_mesh_that_does_not_fit_is_a_clear_error(tmp_path):
    program = write_program(tmp_path)
    proc = run(["-m", "l3m", "train", str(program), "--output", str(tmp_path / "run"), "mesh.tp=3"], nproc=2)
    assert proc.returncode != 0
    assert "world size 2" in proc.stderr and "multiply to 3" in proc.stderr


def test_collectives():
    proc = run(["tests/parallel/worker.py", "collectives"], nproc=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK collectives" in proc.stdout


def test_data_parallel_ranks_draw_their_own_dropout(runs):
    """Weights start alike everywhere; then data-parallel ranks draw different random numbers (their
    dropout / drop-path masks), while tensor-parallel peers, on the same samples, draw the same."""
    for mesh, want in (("dp_shard", "DIFFERENT"), ("tp", "SAME")):
        proc = run(["tests/parallel/worker.py", "seeds", str(runs.program), *MESHES[mesh]], nproc=2)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert want in proc.stdout, (mesh, proc.stdout[-500:])

"""The run directory alone reproduces a run: copied elsewhere with the project deleted,
`l3m train RUN/program.l3m` and `l3m rerun RUN` train it again with the same losses; it records
the imports (also from outside the program's folder), the extension's source, versions, seed and
the git commit of the project (read from .git, never by running git)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from fault_utils import l3m, write_program

from l3m.train.logging import read_metrics

MAIN = """l3m 1
# the program of a small project: sizes from ../common, the head from parts/, a block from an extension
import "../common/sizes.l3m" as sizes
import "parts/head.l3m" as head
data {{
  train: TextBytes(root = "{corpus}", seq_len = 8, batch_size = 2, max_bytes = 0, test_fraction = 0.1) -> tokens, targets
}}
model gpt {{
  preprocessor {{ embed: TokenEmbedding(vocab = 256, dim = sizes.dim) tokens -> x }}
  trunk        {{ scale: E2Scale(factor = 0.5) x -> x
                 blocks: Transformer(dim = sizes.dim, depth = 1, heads = 2, causal = true) x -> x }}
  head         {{ lm: LMHead(dim = sizes.dim, vocab = head.vocab) x -> logits }}
}}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 3e-3)
train {{ steps = 6, log_every = 1, checkpoint_every = 0, seed = 7 }}
log {{ wandb = "disabled", console = "plain" }}
"""

EXTENSION = '''"""A tiny block of the project (an extension module)."""
import torch
from torch import nn

from l3m.registry import register


@register("block")
class E2Scale(nn.Module):
    """Multiply by a constant."""

    outputs = ("x",)

    def __init__(self, factor: float = 1.0):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor
'''


def _git(*args: str, cwd) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]


@pytest.mark.slow
def test_run_directory_reproduces_the_run(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git to make the project")
    project = tmp_path / "project"
    program = write_program(project / "exp", MAIN, "main.l3m", data=tmp_path / "data")
    (project / "common").mkdir()
    (project / "common" / "sizes.l3m").write_text("l3m 1\nlet dim = 16\n")
    (project / "exp" / "parts").mkdir()
    (project / "exp" / "parts" / "head.l3m").write_text("l3m 1\nlet vocab = 256\n")
    (project / "e2ext.py").write_text(EXTENSION)
    _git("init", "-q", cwd=project)
    _git("add", "-A", cwd=project)
    _git("commit", "-q", "-m", "project", cwd=project)
    commit = _git("rev-parse", "HEAD", cwd=project)
    with open(program, "a") as f:  # an uncommitted change: the record says so
        f.write("# tuned\n")

    run = tmp_path / "runs" / "main"
    proc = l3m("train", str(program), "--output", str(run), "--extension", "e2ext", "train.steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    original = _losses(run)
    assert len(original) == 3

    record = json.loads((run / "run.json").read_text())
    assert record["overrides"] == ["train.steps=3"] and record["seed"] == 7
    assert set(record["versions"]) == {"l3m", "torch", "python"}
    assert record["git"]["commit"] == commit and record["git"]["dirty"] is True
    assert record["git"]["changed_files"] == ["exp/main.l3m"]
    assert record["extensions"] == [{"module": "e2ext", "copied": True, "files": ["e2ext.py"]}]
    assert set(record["files"]) == {"program.l3m", "_imports/sizes.l3m", "parts/head.l3m"}
    copy = (run / "program.l3m").read_text()
    assert 'import "_imports/sizes.l3m" as sizes' in copy and 'import "parts/head.l3m" as head' in copy
    assert 'extension "e2ext"' in copy  # given on the command line, declared in the copy

    # only the copy of the run directory is left (the data stays where the program names it)
    elsewhere = tmp_path / "elsewhere" / "main"
    shutil.copytree(run, elsewhere)
    shutil.rmtree(project)
    shutil.rmtree(run)

    proc = l3m("train", str(elsewhere / "program.l3m"), "--output", str(tmp_path / "again"), "train.steps=3",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _losses(tmp_path / "again") == original

    proc = l3m("rerun", str(elsewhere), cwd=tmp_path)  # the recorded overrides, into main-rerun
    assert proc.returncode == 0, proc.stderr
    assert _losses(tmp_path / "elsewhere" / "main-rerun") == original


def test_rerun_of_something_else_is_a_usage_error(tmp_path):
    (tmp_path / "junk").mkdir()
    proc = l3m("rerun", str(tmp_path / "junk"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "not a run directory" in proc.stderr


def test_git_is_read_never_run(tmp_path, monkeypatch):
    """The commit comes from .git itself (packed refs too): a project's .git/config that names a
    program for git to run (core.fsmonitor) never gets it run."""
    if shutil.which("git") is None:
        pytest.skip("needs git to make the project")
    from l3m.train import provenance

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.l3m").write_text("l3m 1\n")
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "a", cwd=repo)
    _git("pack-refs", "--all", cwd=repo)
    commit = _git("rev-parse", "HEAD", cwd=repo)
    marker = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    _git("config", "core.fsmonitor", str(hook), cwd=repo)

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    record = provenance.git_record(repo, [repo / "a.l3m"])
    assert record is not None and record["commit"] == commit and record["dirty"] is False
    (repo / "b.l3m").write_text("l3m 1\n")  # untracked: dirty
    assert provenance.git_record(repo, [repo / "b.l3m"])["changed_files"] == ["b.l3m"]
    assert not marker.exists()

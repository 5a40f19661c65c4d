"""`l3m lint`, `l3m graph`, `l3m blocks`, `l3m explain` as a user types them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, SHIPPED

GOOD = ROOT / "examples" / "llm_bytes.l3m"


def copy_of_example(tmp_path, name: str = "llm_bytes.l3m"):
    """A writable example beside a copy of models/, so its relative imports still resolve."""
    shutil.copytree(ROOT / "models", tmp_path / "models")
    (tmp_path / "examples").mkdir()
    return tmp_path / "examples" / name


def l3m(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "l3m", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_lint_all_shipped_files_is_clean():
    r = l3m("lint", *SHIPPED)
    assert r.returncode == 0, r.stderr
    assert f"{len(SHIPPED)} files checked, 0 errors" in r.stderr


def test_lint_reports_errors_compiler_style(tmp_path):
    bad = copy_of_example(tmp_path, "bad.l3m")
    bad.write_text(GOOD.read_text().replace("logits, targets -> loss", "logits, targts -> loss"))
    r = l3m("lint", bad, GOOD)
    assert r.returncode == 1
    assert "bad.l3m:25:39: error[E101]: loss 'ce' reads key 'targts', which nothing writes" in r.stderr
    assert "did you mean 'targets'?" in r.stderr
    assert "^^^^^^" in r.stderr
    assert "Traceback" not in r.stderr
    assert "2 files checked, 1 error" in r.stderr


def test_lint_json_and_github_formats(tmp_path):
    bad = copy_of_example(tmp_path, "bad.l3m")
    bad.write_text(GOOD.read_text().replace("Perplexity()", "Perplexity(shif = true)"))
    r = l3m("lint", "--format", "json", bad)
    assert r.returncode == 1
    (d,) = json.loads(r.stdout)
    assert {k: d[k] for k in ("line", "col", "code", "severity")} == {"line": 26, "col": 24, "code": "E203",
                                                                        "severity": "error"}
    assert d["file"].endswith("bad.l3m") and "shif" in d["message"]
    r = l3m("lint", "--format", "github", bad)
    assert r.stdout.startswith("::error file=") and "title=E203" in r.stdout


@pytest.mark.parametrize("make", ["missing", "directory", "binary", "latin1"])
def test_unreadable_input_is_a_usage_error(tmp_path, make):
    target = tmp_path / "x.l3m"
    if make == "directory":
        target.mkdir()
    elif make == "binary":
        target.write_bytes(b"\x00\x01\x02l3m 1")
    elif make == "latin1":
        target.write_bytes("l3m 1\nlet s = \"caf\xe9\"".encode("latin-1"))
    r = l3m("lint", target)
    assert r.returncode == 2
    assert "error[E002]" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2():
    assert l3m("lint").returncode == 2
    assert l3m("frobnicate").returncode == 2
    assert l3m("lint", "--explain", "E999").returncode == 2


def test_overrides_on_the_command_line():
    assert l3m("lint", GOOD, "dim=128", "train.steps=5").returncode == 0
    r = l3m("lint", GOOD, "train.stpes=5")
    assert r.returncode == 1 and "did you mean 'train.steps'?" in r.stderr


def test_world_size_checks_the_mesh(tmp_path):
    f = copy_of_example(tmp_path, "m.l3m")
    f.write_text(GOOD.read_text() + "mesh { dp_shard = -1, tp = 2 }\n")
    assert l3m("lint", f, "--world-size", "4").returncode == 0
    r = l3m("lint", f, "--world-size", "3")
    assert r.returncode == 1 and "E601" in r.stderr


def test_explain():
    r = l3m("lint", "--explain", "E101")
    assert r.returncode == 0 and "unwritten-key" in r.stdout
    assert l3m("explain", "w101").returncode == 0


def test_graph_formats(tmp_path):
    for suffix in ("dot", "mmd", "txt", "json"):
        out = tmp_path / "new" / f"g.{suffix}"  # a folder that does not exist yet
        r = l3m("graph", ROOT / "examples" / "clip_digits.l3m", "--render", out)
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size > 100
    tmp_path = tmp_path / "new"
    data = json.loads((tmp_path / "g.json").read_text())
    assert {"blocks", "order", "keys"} <= set(data)
    blk = next(b for b in data["blocks"] if b["path"] == "clip.image.trunk.blocks")
    assert blk["type"] == "Transformer" and blk["model"] == "clip.image" and blk["stage"] == "trunk"
    assert blk["line"] > 0 and blk["file"].endswith("clip.l3m")
    assert "subgraph cluster_" in (tmp_path / "g.dot").read_text()
    assert (tmp_path / "g.mmd").read_text().startswith("flowchart TD")
    assert "Transformer ×2" in (tmp_path / "g.txt").read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graph_svg_and_png(tmp_path):
    r = l3m("graph", GOOD, "--render", tmp_path / "g.svg")
    assert r.returncode == 0 and (tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    r = l3m("graph", GOOD, "--render", tmp_path / "g.png")
    assert r.returncode == 0 and (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_graph_svg_without_graphviz_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on this PATH
    r = subprocess.run([sys.executable, "-m", "l3m", "graph", str(GOOD), "--render", str(tmp_path / "g.svg")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "Graphviz" in r.stderr and "Traceback" not in r.stderr


def test_blocks_lists_the_registry():
    r = l3m("blocks", "--kind", "block")
    assert r.returncode == 0 and "Transformer  x, mask?, context? -> x, aux_loss?, hidden?" in r.stdout

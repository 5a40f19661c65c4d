"""Every benchmark script runs on a tiny size (`--quick`) and writes the JSON the report reads;
the report renders from it. Numbers are never asserted (they belong to the machine), only that
each script measured what it says it measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


def run(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--quick", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    name = "compile" if script == "torch_compile" else script
    return json.loads((out / f"{name}.json").read_text())


def test_frontend(out):
    d = run("frontend", out)
    assert [r["blocks"] for r in d["rows"]] == [100, 300]
    assert all(r["median_s"]["total"] > 0 and r["gc_paused_median_s"]["total"] > 0 for r in d["rows"])


def test_lint_speed_times_cold_runs(out):
    d = run("lint_speed", out)
    assert {r["command"] for r in d["rows"]} >= {"lint", "graph --format dot", "python -c pass"}
    assert all(r["wall_s"]["n"] == 3 and r["wall_s"]["min"] > 0 and r["cpu_s"]["median"] > 0 for r in d["rows"])


def test_overhead_checks_equality_then_times(out):
    d = run("overhead", out)
    assert {c["example"] for c in d["cases"]} == {"llm_bytes", "vit_digits"}
    for c in d["cases"]:
        assert c["max_abs_diff"]["grads"] < 1e-4  # the twin computes what the l3m model computes
        assert c["eager"]["cpu"]["l3m_s"]["median"] > 0 and c["eager"]["cpu"]["ratio"]["n"] == 3


def test_throughput_reports_mfu(out):
    d = run("throughput", out)
    row = d["examples"][0]
    assert row["flops_per_sample"] > 0 and d["peak_flops"]["bf16"] > 0
    assert 0 < row["fp32"]["mfu"] < 1 and row["fp32"]["tokens_per_s"] > 0  # the GPT reads tokens


def test_compile_traces_the_whole_model_as_one_graph(out):
    d = run("torch_compile", out)  # --quick: dynamo only (backend "eager"), no code generation
    (r,) = d["runs"]
    assert r["mode"] == "whole" and r["backend"] == "eager"
    assert r["graphs"] == 1 and r["graph_breaks"] == 0


@pytest.mark.dist
def test_parallel_fsdp_matches_single_process(out):
    d = run("parallel", out)
    (c,) = d["configs"]
    fsdp = c["runs"]["fsdp"]
    assert fsdp["world_size"] == 2 and fsdp["local_batch"] * 2 == fsdp["global_batch"]
    assert fsdp["model_class"].startswith("FSDP")  # l3m.dist really sharded it
    assert fsdp["fsdp_hooks_s_per_step"]["total"] > 0
    assert c["first_loss"]["fsdp"] == pytest.approx(c["first_loss"]["single"], rel=1e-4)


def test_checkpointing_saves_memory(out):
    d = run("checkpointing", out)
    (c,) = d["configs"]
    assert c["layer_type"]["none"] == "TransformerLayer" and c["layer_type"]["full"] != "TransformerLayer"
    assert len(set(round(v, 5) for v in c["first_loss"].values())) == 1
    modes = c["modes"]
    assert modes["full"]["peak_mib"]["activation_after_forward"] < modes["none"]["peak_mib"]["activation_after_forward"]


def test_dataloading_times_the_wait(out):
    d = run("dataloading", out)
    runs = d["examples"][0]["runs"]
    assert [r["workers"] for r in runs] == [0, 2]
    assert all(0 <= r["wait_fraction"] < 1 and r["loader_alone_batch_s"] > 0 for r in runs)


def test_train_examples_records_losses_and_accuracy(out):
    d = run("train_examples", out)
    (r,) = d["runs"]
    assert r["exit_code"] == 0 and r["steps"] == 5
    assert "top1" in r["eval"] and r["first"]["step"] == 1


def test_memory_plan_compares_prediction_with_measurement(out):
    d = run("memory_plan", out)
    (r,) = d["rows"]
    assert r["example"] == "llm_bytes" and r["predicted_mib"] > 0 and r["measured_mib"] > 0
    assert r["error"] == pytest.approx((r["predicted_mib"] - r["measured_mib"]) / r["measured_mib"])


def test_peers_checks_equal_outputs_then_writes_ratios(out):
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    d = run("peers", out, "--cases", "llama:tiny,vit:tiny")  # torchtitan and open_clip: tests/interop
    assert {(c["family"], c["peer"]) for c in d["cases"]} == {("llama", "transformers"), ("vit", "timm")}
    for c in d["cases"]:
        assert c["max_abs_diff"]["grads"] < 1e-4  # the peer computes what the l3m model computes
        for r in c["runs"]:
            assert r["cpu"]["ratio"]["n"] == 3 and r["cpu"]["ratio"]["median"] > 0
            assert r["cpu"]["aa_ratio"]["median"] > 0 and r["cpu"]["peer_s"]["median"] > 0
    assert {(r["mode"], r["dtype"]) for c in d["cases"] for r in c["runs"]} >= {("eager", "fp32"), ("eager", "bf16")}
    eager_fp32 = [r for c in d["cases"] for r in c["runs"] if (r["mode"], r["dtype"]) == ("eager", "fp32")]
    assert all(r["cpu"]["default_ratio"]["median"] > 0 for r in eager_fp32)  # l3m's default compile, peer eager


def test_report_renders_what_exists(out):
    if not (out / "frontend.json").exists():  # under xdist this test may run in another worker than test_frontend
        run("frontend", out)
    proc = subprocess.run([sys.executable, str(BENCH / "report.py"), "--results", str(out), "--out",
                           str(out / "RESULTS.md")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = (out / "RESULTS.md").read_text()
    assert "## Summary" in text and "## 1. Front end" in text
    for path in out.glob("*.json"):
        section = {"frontend": "## 1.", "overhead": "## 2.", "throughput": "## 3.", "compile": "## 4.",
                   "parallel": "## 5.", "checkpointing": "## 6.", "dataloading": "## 7.",
                   "train_examples": "## 8.", "data_scale": "## 9.", "image_loader": "## 9.",
                   "lint_speed": "## 10.", "lsp_latency": "## 11.", "generate_speed": "## 12.",
                   "memory_plan": "## 13.", "peers": "## 14."}[path.stem]
        after = text.split(section, 1)[1]
        assert "no results yet" not in after.split("\n## ", 1)[0]
    assert all((out / f).exists() for f in ("frontend.svg",))

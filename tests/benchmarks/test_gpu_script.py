"""`benchmarks/gpu.sh` is prepared on the CPU: its smoke mode (QUICK=1) trains the GPU benchmark's LLM
file at a tiny size through the same script, and the report renders section 15 from what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_smoke_run_writes_what_the_report_reads(tmp_path):
    env = {**os.environ, "QUICK": "1", "PARTS": "llm", "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    d = json.loads((tmp_path / "gpu_llm.json").read_text())
    (row,) = d["rows"]
    assert "error" not in row, row
    assert row["variant"] == "eager" and row["tokens_per_step"] == 2 * 127 and row["tokens_per_s"] > 0
    assert row["flops_per_sample"] > 0 and row["mfu_measured_peak"] > 0
    assert all(x == x for x in row["losses"])  # finite losses, read back from the trainer's steps
    assert (tmp_path / "nvidia-smi.txt").exists()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    d["datasheet_flops"] = 1e12  # as gpu.sh passes on a GPU
    row["mfu_datasheet"] = 0.5
    text, summary = report.gpu_llm(d, tmp_path)
    assert "| eager | 0.01B | 254 |" in text and summary[0][1] == "≥ 45%" and summary[0][3] is True

"""benchmarks/lsp_latency.py runs (`--quick`) and records what it says it measures; numbers belong to
the machine and are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls")
ROOT = Path(__file__).resolve().parents[2]


def test_lsp_latency_benchmark_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lsp_latency.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads((tmp_path / "lsp_latency.json").read_text())
    assert [r["file"] for r in d["rows"]] == ["realistic_100", "chain_100"]
    for r in d["rows"]:
        assert r["edit_ms"]["n"] == 2 and r["edit_ms"]["min"] > 0 and r["compile_in_process_ms"]["median"] > 0

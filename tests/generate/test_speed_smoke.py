"""benchmarks/generate_speed.py runs on a tiny size (`--quick`) and writes its JSON; numbers are
never asserted, only that both variants were measured and agreed."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_generate_speed_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/generate_speed.py"), "--quick", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (row,) = json.loads((tmp_path / "generate_speed.json").read_text())["configs"]
    assert row["new_tokens"] == 16 and row["batch"] == 1
    assert all(row["tokens_per_s"][v]["median"] > 0 for v in ("cache", "no_cache"))

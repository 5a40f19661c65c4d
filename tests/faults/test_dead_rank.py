"""A rank that dies in a 2-process run (gloo): the run ends instead of hanging, and the report
names the rank that failed and its message."""

from __future__ import annotations

import re

import pytest
from fault_utils import torchrun, write_program

pytestmark = pytest.mark.dist


def test_dead_rank_is_named_and_the_others_stop(tmp_path):
    program = write_program(tmp_path)
    # A hang would hit the subprocess timeout (TimeoutExpired fails the test); the process-group
    # timeout is short so that even a rank waiting on a silent peer gives up well before it.
    proc = torchrun("train", str(program), "--output", str(tmp_path / "run"), cwd=tmp_path, timeout=240,
                    L3M_FAULT="raise,step=2,rank=1", L3M_DIST_TIMEOUT="30")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # rank 1 says it failed, naming itself and the failure, without a wall of traceback on its own line
    assert "l3m: rank 1: internal error: InjectedFault: rank 1 failed on purpose after step 2" in proc.stderr
    # torchrun's summary: the root cause is rank 1, with rank 1's own message (from the error file l3m wrote)
    root = out.split("Root Cause", 1)[1]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", root), root
    assert "traceback : rank 1: InjectedFault: rank 1 failed on purpose after step 2" in root
    # rank 0 trained up to the fault and then stopped too (by torchrun or by losing its peer)
    assert "step 2/6" in proc.stdout and "step 3/6" not in proc.stdout
    assert "internal error" not in "\n".join(line for line in proc.stderr.splitlines() if "rank 0" in line)

"""The open_clip and torchtitan converters as a user types them: `l3m export ... --to KIND --file F` and
`l3m import KIND ...` round-trip a model's weights, and a model the layout cannot express is one line and
exit 1, never a traceback. (Equal outputs against the real libraries: test_openclip.py,
test_torchtitan_llama.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import ROOT, dist_env
from safetensors.torch import save_file
from test_openclip import AS_OPEN_CLIP

import l3m
from l3m.model.build import materialize
from l3m.train.export import read_weights

CASES = {
    "open-clip": ("clip_digits.l3m", AS_OPEN_CLIP),
    "torchtitan-llama": ("llama_tiny.l3m", []),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "l3m", *args], cwd=ROOT, env=dist_env(), capture_output=True,
                          text=True, timeout=240)


@pytest.mark.parametrize("kind", CASES)
def test_export_then_import_gives_the_same_tensors(kind, tmp_path):
    example, overrides = CASES[kind]
    path = str(ROOT / "examples" / example)
    torch.manual_seed(0)
    model = materialize(l3m.load(path, overrides).build_model(), "cpu")
    weights, foreign, back = (tmp_path / f"{n}.safetensors" for n in ("l3m", "foreign", "back"))
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(weights))  # ties: own copies

    exported = cli("export", str(weights), str(foreign), "--to", kind, "--file", path, *overrides)
    assert exported.returncode == 0, exported.stderr
    imported = cli("import", kind, str(foreign), path, str(back), *overrides)
    assert imported.returncode == 0, imported.stderr
    original, again = read_weights(weights), read_weights(back)
    assert set(original) <= set(again)
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_a_model_open_clip_cannot_express_is_one_line(tmp_path):
    path = str(ROOT / "examples" / "clip_digits.l3m")  # RMSNorm/SwiGLU towers without biases
    torch.manual_seed(0)
    model = materialize(l3m.load(path).build_model(), "cpu")
    weights = tmp_path / "l3m.safetensors"
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(weights))  # ties: own copies
    proc = cli("export", str(weights), str(tmp_path / "out.safetensors"), "--to", "open-clip", "--file", path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip()
    assert not (tmp_path / "out.safetensors").exists()

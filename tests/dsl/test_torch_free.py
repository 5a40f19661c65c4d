"""`l3m lint`, `l3m graph` and `l3m fmt` never import torch: they run, and say the same, where torch
cannot be imported at all (and import neither networkx nor l3m's model code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, SHIPPED

# Runs the CLI in-process for every command and file, and prints what each said as JSON: one
# interpreter for all of them keeps the test fast. argv[1]: "block" makes torch unimportable.
DRIVER = textwrap.dedent('''
    import contextlib, io, json, sys

    BLOCKED = ("torch", "torchvision")

    class Block:
        """A finder that refuses torch, as an install without it would."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    if sys.argv[1] == "block":
        sys.meta_path.insert(0, Block())
    from l3m.cli import main

    def run(argv):
        out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
            out.flush()
        return [rc, out.buffer.getvalue().decode(), err.getvalue()]

    files = sys.argv[2:]
    said = {"lint": run(["lint", *files])}
    for f in files:
        said["graph " + f] = run(["graph", "--format", "dot", f])
        said["fmt " + f] = run(["fmt", "--check", f])
    said["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "networkx", "numpy")
                             or m.startswith(("l3m.model.blocks", "l3m.data.sources", "l3m.train")))
    print(json.dumps(said))
''')


def _run(mode: str) -> dict:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("L3M_DEBUG", None)
    files = [str(p.relative_to(ROOT)) for p in SHIPPED]
    proc = subprocess.run([sys.executable, "-c", DRIVER, mode, *files], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def runs() -> tuple[dict, dict]:
    return _run("block"), _run("normal")


def test_lint_graph_and_fmt_run_without_torch_and_say_the_same(runs):
    blocked, normal = runs
    rc, _, err = blocked["lint"]
    assert rc == 0 and "internal error" not in err, err[-2000:]
    assert f"{len(SHIPPED)} files checked, 0 errors" in err
    for key, said in normal.items():
        if key == "modules":
            continue
        assert blocked[key] == said, key
        if key.startswith("graph "):
            assert said[0] == 0 and said[1].startswith("digraph"), key


def test_nothing_of_torch_networkx_or_the_model_code_is_imported(runs):
    blocked, normal = runs
    assert blocked["modules"] == []
    assert normal["modules"] == []  # where torch is installed, lint still does not import it


EXTENSION = textwrap.dedent('''
    from torch import nn

    from l3m import register
    from l3m.data.sources.base import Source
    from l3m.model.blocks.layers import Linear


    @register("block")
    class Wide(Linear):
        """A built-in base: its constructor and ports come from the registry manifest."""


    @register("block")
    class Plain(nn.Module):
        outputs = ("x",)

        def __init__(self, dim: int):
            super().__init__()

        def forward(self, x):
            return x


    @register("source")
    class Counting(Source):
        outputs = ("tokens", "targets")

        def __init__(self, n: int = 4, batch_size: int = 2):
            super().__init__(batch_size, True, True)
''')
PROGRAM = """l3m 1
extension "tfext.blocks"
data { train: Counting(n = 8) -> tokens, targets }
model m {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  trunk        { w: Wide(16, 16, bogus = 1) x -> x
                 p: Plain(dim = "16") x -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""


def test_extension_bases_from_l3m_and_torch_are_read_without_importing_either(tmp_path):
    (tmp_path / "tfext").mkdir()
    (tmp_path / "tfext" / "__init__.py").write_text("")
    (tmp_path / "tfext" / "blocks.py").write_text(EXTENSION)
    (tmp_path / "prog.l3m").write_text(PROGRAM)
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, "block", str(tmp_path / "prog.l3m")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout)
    rc, _, err = said["lint"]
    assert rc == 1 and "internal error" not in err, err
    assert "error[E203]: 'Wide' has no argument 'bogus'" in err  # Linear's signature, from the manifest
    assert "error[E205]: argument 'dim' of 'Plain' must be an integer" in err
    assert err.count("error[") == 2 and "W104" not in err  # the Source base was read from l3m's source
    assert said["modules"] == []

"""The worked extension example (examples/ext/): lint reads its declarations without importing it;
building, init, tensor-parallel plans, context parallelism and activation checkpointing use its traits;
an error inside it names the block and the line of the extension's code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

import l3m
from l3m.config import MeshConfig, TrainConfig
from l3m.model.blame import BlockFailure, blame
from l3m.model.build import materialize

EXAMPLE = ROOT / "examples" / "ext" / "mlp_digits.l3m"
MODULE = ROOT / "examples" / "ext" / "residual_mlp.py"

LINT = """
import json, sys
from l3m.dsl import compile_file
c = compile_file(sys.argv[1])
print(json.dumps({"diags": [[d.code, d.span.line if d.span else 0, d.span.col if d.span else 0, d.message]
                            for d in c.diagnostics if d.is_error],
                  "imported": [m for m in ("residual_mlp", "torch") if m in sys.modules]}))
"""


def lint(path) -> dict:
    out = subprocess.run([sys.executable, "-c", LINT, str(path)], capture_output=True, text=True, check=True,
                         cwd=path.parent)
    return json.loads(out.stdout)


def test_lint_checks_the_example_without_importing_it(tmp_path):
    clean = lint(EXAMPLE)
    assert clean == {"diags": [], "imported": []}

    shutil.copy(MODULE, tmp_path / MODULE.name)
    text = EXAMPLE.read_text()
    text = text.replace("MLPStack(dim = dim,", "MLPStack(dim = 2 * dim,")  # a width the patches do not have
    text = text.replace("norm = RMSNorm(eps = 1e-5)", "norm = SwiGLU(hidden = 8)")  # not a Norm component
    text = text.replace("{ pool: AvgPool()", "{ res: ResidualMLP(dim = 2 * dim, hidden = 8)  x -> x\n  pool: AvgPool()")
    bad = tmp_path / "bad.l3m"
    bad.write_text(text)
    found = lint(bad)
    assert found["imported"] == []  # neither the extension nor torch ran
    lines = text.splitlines()
    by_code = {}
    for code, line, col, message in found["diags"]:
        by_code.setdefault(code, []).append((lines[line - 1][col - 1:], message))
    # The shape rule the class body declares (MLPStack) ...
    assert any(src.startswith("dim = 2 * dim") and "'mlp.trunk.mlps' (MLPStack) expects x: [B, 16, 64]" in msg
               and "[B, 16, 32]" in msg for src, msg in by_code["E750"])
    # ... and the argument rule declared at registration (ResidualMLP), at the argument.
    assert by_code["E754"] == [("hidden = 8)  x -> x", "'mlp.postprocessor.res' (ResidualMLP): "
                                "hidden (8) must be at least dim (64)")]
    # The argument annotated with an interface (`norm: Norm | ...`) takes only a Norm component.
    ((src, msg),) = by_code["E205"]
    assert src.startswith("SwiGLU(hidden = 8)") and msg.startswith("argument 'norm' of 'MLPStack' must be a Norm "
                                                                    "component, not 'SwiGLU'")


@pytest.fixture(scope="module")
def compiled():
    return l3m.load(str(EXAMPLE))  # imports the extension


def test_build_initialises_with_the_blocks_init_weights(compiled):
    model = materialize(compiled.build_model(), "cpu")  # proves every tensor is written by some init
    stack = model.get_submodule("mlp.trunk.mlps")
    assert len(stack.mlps) == 2
    for mlp in stack.mlps:
        assert torch.equal(mlp.scale, torch.full((32,), 0.1))  # ResidualMLP.init_weights
        assert mlp.w1.weight.std() > 0
        assert type(mlp.norm).__name__ == "RMSNorm" and mlp.norm.eps == 1e-5  # the file's component
    assert stack.mlps[0].norm is not stack.mlps[1].norm  # each layer built its own


def test_the_parallelizer_applies_the_declared_traits(compiled):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from l3m.dist.cp import check_cp
    from l3m.dist.parallelize import parallelize
    from l3m.model.blocks.layers import collect_tp_plan

    model = compiled.build_model()  # meta device
    plan = {k: v for k, v in collect_tp_plan(model).items() if k.startswith("mlp.trunk.")}
    assert set(plan) == {f"mlp.trunk.mlps.mlps.{i}.{w}" for i in range(2) for w in ("w1", "w2")}
    assert isinstance(plan["mlp.trunk.mlps.mlps.0.w1"], ColwiseParallel)
    assert isinstance(plan["mlp.trunk.mlps.mlps.1.w2"], RowwiseParallel)
    # context parallelism: the extension's blocks declare "local"; the patch embedding runs whole
    assert check_cp(model) == ["mlp.preprocessor.patch", "mlp.postprocessor.pool"]
    # activation checkpointing wraps the layers the block names (`layer_lists=("mlps",)`), on one process
    parallelize(model, MeshConfig(), TrainConfig(activation_checkpointing="full"))
    assert [type(m).__name__ for m in model.get_submodule("mlp.trunk.mlps").mlps] == ["CheckpointWrapper"] * 2


def test_the_built_model_learns(compiled):
    """A few AdamW steps on one batch: the loss falls (the extension's blocks train)."""
    from l3m.model.criterion import build_criterion

    torch.manual_seed(0)
    model = materialize(compiled.build_model(), "cpu")
    crit = build_criterion(compiled.program, device="cpu")
    batch = {"image": torch.randn(16, 3, 16, 16), "label": torch.randint(0, 10, (16,))}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _ = crit(model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_failure_inside_the_extension_names_the_block_and_its_line(compiled):
    model = materialize(compiled.build_model(), "cpu")
    bad = {"image": torch.randn(2, 3, 16, 16)}
    stack = model.get_submodule("mlp.trunk.mlps")
    stack.mlps[1].w2 = torch.nn.Linear(7, 32)  # the second layer now disagrees with its input
    with pytest.raises(BlockFailure) as e, blame(compiled.program, model):
        model(bad)
    d = e.value.diagnostic
    assert d.code == "E901" and d.message.startswith("block 'mlps' (MLPStack) failed")
    assert str(d.span).endswith("mlp_digits.l3m:20:19")  # the node in the .l3m file
    (text, span), = [(t, s) for t, s in d.notes if t.startswith("raised in")]
    assert text == "raised in forward()" and span.file.endswith("residual_mlp.py")
    source = MODULE.read_text().splitlines()[span.line - 1]
    assert "self.w2(" in source and source[span.col - 1:].startswith("self.w2(")


def test_the_declared_plan_applies_on_a_one_rank_mesh(compiled, tmp_path):
    """The named styles become torch styles that accept the extension's layers, and outputs are kept."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from l3m.dist.tp import apply_tp

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    torch.manual_seed(0)
    model = materialize(compiled.build_model(), "cpu")
    ref = copy.deepcopy(model)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        plan = apply_tp(model, init_device_mesh("cpu", (1,), mesh_dim_names=("tp",)))
        assert "mlp.trunk.mlps.mlps.1.w2" in plan
        assert isinstance(model.get_submodule("mlp.trunk.mlps").mlps[0].w1.weight, DTensor)
        batch = {"image": torch.randn(2, 3, 16, 16)}
        torch.testing.assert_close(model(batch)["logits"], ref(batch)["logits"])
    finally:
        dist.destroy_process_group()

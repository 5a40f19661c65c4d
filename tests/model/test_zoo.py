"""The model zoo: every full-size file plans on the meta device with the parameter counts of the
original systems; every tiny example builds, runs forward and backward on a real batch."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import EXAMPLES, ROOT

from l3m import registry
from l3m.data.loader import build_loader
from l3m.dsl import compile_file
from l3m.model.build import materialize
from l3m.model.criterion import build_criterion
from l3m.plan import plan

# Parameter counts of the full-size systems, computed from their published shapes.
FULL_SIZE = {
    "vit_imagenet.l3m": 304_181_224,  # ViT-L/16 (+ the final trunk norm before the head norm)
    "llm.l3m": 1_439_895_552,  # 2048 x 24, SwiGLU 5632, untied 50432-vocab head
    "llama.l3m": 1_235_814_400,  # Llama-3.2-1B
    "aimv1.l3m": 1_087_594_572,  # 600M-class encoder + 12-block 2048-wide MLP decoder
    "aimv2.l3m": 530_632_704,
    "aimv2_moe.l3m": 476_682_496,
    "clip.l3m": 433_533_441,
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_plans_on_meta(name):
    compiled = compile_file(str(ROOT / "models" / name))
    assert compiled.ok
    p = plan(compiled.program, world_size=64, schedule=compiled.flow.model_order())
    assert p["params"]["total"] == FULL_SIZE[name]
    assert p["flops_per_sample"]["forward"] > 2 * p["params"]["total"]  # at least one multiply-add per weight


def first_batch(program):
    train = next(n for n in program.nodes if n.role == "source" and n.name == "train")
    entry = registry.lookup(train.call.type_name)
    source = entry.obj(**train.call.kwargs_for(entry.signature))
    gens = []
    for n in program.of_role("generator"):
        e = registry.lookup(n.call.type_name)
        gens.append((e.obj(**n.call.kwargs_for(e.signature)), n.ports_in(), n.ports_out()))
    loader = build_loader(source, gens, train.ports_out(), seed=0)
    return next(iter(loader))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_builds_and_trains_one_step(path):
    torch.manual_seed(0)
    compiled = compile_file(str(path))
    assert compiled.ok, [d.message for d in compiled.errors]
    model = materialize(compiled.build_model(), "cpu")
    criterion = build_criterion(compiled.program)
    batch = first_batch(compiled.program)
    out = model(batch)
    loss, logs = criterion(out)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(math.isfinite(float(v)) for v in logs.values())

"""`l3m plan`'s per-rank peak memory: a training step simulated on meta, rescaled to the mesh,
checked against a real CPU step, and `--device`."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
from helpers import ROOT

import l3m
from l3m.cli import main
from l3m.devices import Device
from l3m.plan import plan
from l3m.plan_memory import StepShape, predict, rank_breakdown

EXAMPLE = str(ROOT / "examples" / "llm_bytes.l3m")


@pytest.fixture(scope="module")
def compiled():
    return l3m.load(EXAMPLE, [])


@pytest.fixture(scope="module")
def planned(compiled):
    return plan(compiled.program, 1, schedule=compiled.flow.model_order())


def _predict(compiled, shape: StepShape) -> dict:
    from l3m.model.build import build_model
    from l3m.model.criterion import build_criterion
    from l3m.plan import meta_batch, needed_keys

    model = build_model(compiled.program, device="meta", schedule=compiled.flow.model_order())
    criterion = build_criterion(compiled.program, device="meta", metrics=False)
    sample = meta_batch(compiled.program, needed_keys(model, criterion), [])
    return predict(compiled.program, sample, shape, model=model, params=list(model.parameters()), optimizer_states=2,
                   schedule=compiled.flow.model_order())


def test_breakdown_adds_up_to_the_peak(planned):
    peak = planned["peak_memory"]
    assert peak["peak"] == sum(peak["breakdown"].values()) > 0
    assert peak["breakdown"]["optimizer"] == 2 * peak["breakdown"]["params"]  # AdamW: two fp32 states


def test_full_checkpointing_keeps_fewer_activations(compiled):
    shape = StepShape(micro=4)
    none = _predict(compiled, shape)["breakdown"]["activations"]
    full = _predict(compiled, replace(shape, ac="full"))["breakdown"]["activations"]
    assert 0 < full < none


def test_dp_shard_halves_parameters_gradients_and_state():
    sim = {"params": 4000, "grads": 4000, "optimizer": 8000, "activations": 100, "temporaries": 10, "other": 0,
           "buffers": 0, "inputs": 0, "numel": 1000, "trainable": 1000, "elem": 4}
    import torch

    params = [torch.empty(10, 100, device="meta", requires_grad=True)]
    one = rank_breakdown(sim, StepShape(), params=params, layer_numel=500, root_numel=0, optimizer_states=2)
    two = rank_breakdown(sim, StepShape(dp_shard=2), params=params, layer_numel=500, root_numel=0, optimizer_states=2)
    for part in ("params", "grads", "optimizer"):
        assert two[part] * 2 == one[part]
    assert two["comm_buffers"] > 0 == one["comm_buffers"]  # FSDP gathers and reduce-scatters
    assert two["activations"] == one["activations"]


def test_prediction_is_near_a_measured_cpu_step(compiled, planned):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common
    from memory_plan import measured_peak

    s = common.session(compiled)
    try:
        measured = measured_peak(common.trainer(s), s)
    finally:
        s.close()
    assert planned["peak_memory"]["peak"] == pytest.approx(measured, rel=0.25)


def test_a_device_too_small_gets_suggestions(compiled, planned):
    small = Device("toy", int(planned["peak_memory"]["peak"] * 0.8), {"fp32": 1e12, "bf16": 2e12, "fp8": None})
    p = plan(compiled.program, 1, schedule=compiled.flow.model_order(), device=small)
    fit = p["device"]
    assert not fit["fits"] and fit["step_s"] > 0
    changes = {r["change"].split(" =")[0]: r for r in fit["suggestions"]}
    assert "train.activation_checkpointing" in changes and "mesh.dp_shard" in changes
    assert all(r["peak"] < planned["peak_memory"]["peak"] for r in fit["suggestions"] if r["peak"] is not None)


def test_cli_device_fits_and_json_has_the_breakdown(capsys):
    assert main(["plan", EXAMPLE, "--device", "H100", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"]["fits"] and out["device"]["step_s"] > 0
    assert set(out["peak_memory"]["breakdown"]) >= {"params", "grads", "optimizer", "activations", "comm_buffers"}


def test_cli_unknown_device_is_a_usage_error(capsys):
    assert main(["plan", EXAMPLE, "--device", "TPUv9"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'TPUv9'" in err and "H200" in err and len(err.strip().splitlines()) == 1

"""`activation_checkpointing = mlp` checkpoints each layer's feed-forward only (ml-l3m's
`fsdp_layers_to_activation_checkpoint: [SwiGLUFFN]`): same gradients, the MLP's matmuls (and only
those) run again in the backward pass. One process."""

from __future__ import annotations

import copy

import pytest
import torch
from dist_utils import LLM
from test_dist_ac_grads import grads_and_backward_matmuls
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from l3m.dist.ac import apply_ac
from l3m.dist.units import repeated_layers
from l3m.model.build import build_model, materialize


@pytest.fixture
def model(compile_text, tmp_path):
    compiled = compile_text(LLM.format(corpus=tmp_path / "corpus.txt"))
    torch.manual_seed(0)
    return materialize(build_model(compiled.program, device="meta", schedule=compiled.flow.model_order()), "cpu")


def test_mlp_checkpointing_wraps_the_mlps_and_keeps_gradients(model):
    plain_grads, plain_mm = grads_and_backward_matmuls(model)
    full = copy.deepcopy(model)
    apply_ac(full, "full")
    full.zero_grad(set_to_none=True)
    _, full_mm = grads_and_backward_matmuls(full)

    wrapped = copy.deepcopy(model)
    wrapped.zero_grad(set_to_none=True)
    assert apply_ac(wrapped, "mlp") == 2  # one MLP in each of the two layers
    (layers,) = repeated_layers(wrapped)
    for layer in layers:
        assert not isinstance(layer, CheckpointWrapper)  # the layer itself (attention) is not recomputed
        assert isinstance(layer.mlp, CheckpointWrapper)
    grads, mlp_mm = grads_and_backward_matmuls(wrapped)
    assert grads.keys() == plain_grads.keys()  # wrapper prefixes are cleaned away
    for k in grads:
        torch.testing.assert_close(grads[k], plain_grads[k], rtol=1e-5, atol=1e-7, msg=k)
    # SwiGLU's gate and up projections run again in each layer (the recompute stops once the saved
    # tensors are back, so the output projection does not); full checkpointing also reruns attention's.
    assert mlp_mm == plain_mm + 2 * 2
    assert plain_mm < mlp_mm < full_mm


def test_state_dict_keys_do_not_change(model):
    keys = set(model.state_dict())
    wrapped = copy.deepcopy(model)
    apply_ac(wrapped, "mlp")
    assert set(wrapped.state_dict()) == keys  # checkpoints load across modes

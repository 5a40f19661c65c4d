"""Fixtures of the generation tests: weights files of tiny random decoders for the command line."""

from __future__ import annotations

import pytest
from gen_models import MODELS, build, save_weights
from helpers import ROOT


@pytest.fixture(scope="module")
def llama_weights(tmp_path_factory):
    """(weights file, program, overrides) of a random tiny Llama."""
    path = tmp_path_factory.mktemp("gen") / "llama.safetensors"
    save_weights(build("llama"), path)
    program, overrides = MODELS["llama"]
    return path, ROOT / program, overrides

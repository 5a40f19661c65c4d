"""Exports are ordinary files (0o666 less the umask, not safetensors' 0600), written whole or not
at all; and the configs read off the full-size shipped models (on the meta device, no weights)."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import ROOT

import l3m
from l3m.durable import atomic_output, ordinary_mode


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_output_gives_an_ordinary_mode(tmp_path, mask, mode):
    import torch
    from safetensors.torch import save_file

    old = os.umask(mask)
    try:
        assert ordinary_mode() == mode
        with atomic_output(tmp_path / "sub" / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sub" / "w.safetensors").stat().st_mode) == mode
    assert os.listdir(tmp_path / "sub") == ["w.safetensors"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


def test_llama_file_gives_llama_3_2_1b_config():
    from l3m.interop.hf import hf_layout, llama_config

    model = l3m.load(str(ROOT / "models" / "llama.l3m")).build_model()  # meta: nothing allocated
    cfg = llama_config(model, hf_layout(model), dtype="bfloat16", max_positions=2048)
    want = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                tie_word_embeddings=True, attention_bias=False, mlp_bias=False, max_position_embeddings=262144)
    assert {k: cfg[k] for k in want} == want
    assert cfg["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}


def test_vit_imagenet_exports_a_vit_large_trunk():
    from l3m.interop.timm_export import timm_export

    export = timm_export(l3m.load(str(ROOT / "models" / "vit_imagenet.l3m")).build_model())
    a = export.args
    assert (a["embed_dim"], a["depth"], a["num_heads"], a["patch_size"], a["img_size"]) == (1024, 24, 8, 16, 224)
    assert (a["num_classes"], a["global_pool"], a["qkv_bias"], a["proj_bias"]) == (0, "token", True, False)
    assert any("Classifier 'vit.head.fc' is not exported" in n for n in export.notes)

"""`train.compile`: "blocks" (each repeated layer) and "model" (the whole forward) train like eager
mode, and the setting's values are checked."""

from __future__ import annotations

import logging

import pytest
from train_utils import final_weights, metrics

from l3m.config import compile_mode
from l3m.train.api import train_main

pytestmark = pytest.mark.usefixtures("run_env")


def test_true_keeps_its_meaning_and_strings_choose():
    assert compile_mode(True, world_size=1) == "model" and compile_mode(True, world_size=2) == "blocks"
    assert compile_mode(False) == compile_mode("none") == "none"
    assert compile_mode("blocks", world_size=1) == "blocks" and compile_mode("model", world_size=4) == "model"
    with pytest.raises(ValueError, match="train.compile"):
        compile_mode("graph")


def test_auto_compiles_each_layer_on_a_gpu_and_nothing_on_the_cpu():
    from l3m.config import TrainConfig

    assert TrainConfig().compile == "auto"  # the default
    assert compile_mode("auto", 1, "cuda") == compile_mode("auto", 8, "cuda") == "blocks"
    assert compile_mode("auto", 1, "cpu") == compile_mode("auto", 2, "cpu") == "none"


def test_lint_refuses_an_unknown_value(llm, compile_text):
    c = compile_text(llm.read_text(), overrides=["train.compile=regional"])
    (d,) = c.errors
    assert d.code == "E602" and "'train.compile'" in d.message


@pytest.mark.slow
def test_blocks_and_model_train_as_eager(llm, tmp_path, caplog):
    ov = ["train.steps=2", "train.log_every=1", "dim=16"]
    caplog.set_level(logging.INFO, logger="l3m.train")
    runs = {}
    for mode in ("none", "blocks", "model"):
        runs[mode] = tmp_path / mode
        assert train_main(str(llm), [*ov, f"train.compile={mode}"], output=str(runs[mode])) == 0
    eager = [r["loss"] for r in metrics(runs["none"])]
    for mode in ("blocks", "model"):
        losses = [r["loss"] for r in metrics(runs[mode])]
        assert losses == pytest.approx(eager, abs=1e-5), mode
        assert final_weights(runs[mode]).keys() == final_weights(runs["none"]).keys()  # no `_orig_mod.`
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("torch.compile")]
    assert len(said) == 2 and said[0].startswith("torch.compile (blocks: each repeated layer): the first step")
    assert "graphs reused)" in said[0]  # and how much came from inductor's on-disk cache

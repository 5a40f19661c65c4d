"""AIM's probes on a frozen trunk: they learn separable classes, leave the trunk as it was, and
log to the run."""

from __future__ import annotations

import json

import pytest
import torch
from eval_utils import save_weights
from helpers import ROOT

from l3m.cli import main
from l3m.evals.probe import AttentiveProbe, LinearProbe, default_heads, train_probe

AIM = ROOT / "examples" / "aimv1_digits.l3m"
TINY_AIM = ["aim.dim=32", "aim.depth=1", "aim.heads=2", "aim.dec_dim=16", "aim.dec_depth=1", "aim.dec_hidden=16"]


@pytest.mark.parametrize("probe", [AttentiveProbe(8, 3, 2), LinearProbe(8, 3)])
def test_a_probe_learns_separable_features(probe):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    feats = torch.randn(60, 5, 8, generator=g) * 0.3
    feats[torch.arange(60), :, labels] += 2.0  # class k lights channel k in every token
    train_probe(probe, feats, labels, steps=40, lr=1e-2, weight_decay=0.0, batch_size=32)
    probe.eval()
    assert (probe(feats).argmax(-1) == labels).float().mean() > 0.9


def test_default_heads_divide_the_width():
    assert default_heads(64) == 1 and default_heads(1024) == 16 and default_heads(96) == 1
    assert 768 % default_heads(768) == 0


@pytest.mark.parametrize("suite", ["attentive-probe", "linear-probe"])
def test_probe_beats_chance_on_a_frozen_random_trunk(suite, colors, tmp_path, capsys):
    train, val = colors
    weights = save_weights(tmp_path / "w.safetensors", AIM, TINY_AIM)
    before = (tmp_path / "w.safetensors").read_bytes()
    code = main(["eval", str(AIM), *TINY_AIM, "--checkpoint", str(weights), "--suite", suite, "--train", str(train),
                 "--val", str(val), "--steps", "40", "--batch-size", "16", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)["results"]
    assert r["classes"] == 3 and r["val_samples"] == 12 and r["train_samples"] == 24
    assert r["top1"] > 0.5  # chance is 1/3
    assert "aim.trunk.encoder" in r["features"]
    assert (tmp_path / "w.safetensors").read_bytes() == before


def test_probe_of_a_run_is_logged_to_its_metrics(colors, tmp_path, capsys):
    from l3m.train.api import train_main
    from l3m.train.logging import read_metrics

    train, val = colors
    run = tmp_path / "run"
    assert train_main(str(AIM), [*TINY_AIM, "train.steps=2", "train.checkpoint_every=2", "log.wandb=disabled",
                                 "train.log_every=1", "log.tensorboard=true"], output=str(run)) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--suite", "linear-probe", "--train", str(train), "--val", str(val),
                 "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "linear-probe (step 2" in out and "top1" in out
    rec = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "suite/linear-probe"]
    assert len(rec) == 1 and rec[0]["step"] == 2 and 0.0 <= rec[0]["top1"] <= 1.0
    from l3m.train.tensorboard import read_scalars

    assert read_scalars(run / "tensorboard")["suite/linear-probe/top1"] == {2: pytest.approx(rec[0]["top1"])}
    assert main(["eval", str(run), "--suite", "linear-probe", "--train", str(train), "--val", str(val),
                 "--steps", "5", "--no-log"]) == 0
    assert len([r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "suite/linear-probe"]) == 1
    # training on from the checkpoint keeps the suite's record (it is at the checkpoint's step)
    assert train_main(str(AIM), [*TINY_AIM, "train.steps=3", "train.checkpoint_every=2", "log.wandb=disabled",
                                 "train.log_every=1", "log.tensorboard=true"], output=str(run)) == 0
    assert len([r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "suite/linear-probe"]) == 1


def test_probe_needs_both_folders_and_known_features(colors, tmp_path, capsys):
    train, _ = colors
    weights = save_weights(tmp_path / "w.safetensors", AIM, TINY_AIM)
    base = ["eval", str(AIM), *TINY_AIM, "--checkpoint", str(weights), "--suite", "attentive-probe"]
    assert main([*base, "--train", str(train)]) == 2
    assert "--val DIR" in capsys.readouterr().err
    assert main([*base, "--train", str(train), "--val", str(train), "--features", "aim.nope"]) == 2
    assert "no block 'aim.nope'" in capsys.readouterr().err

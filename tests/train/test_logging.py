"""metrics.jsonl, the console line and the choice of wandb mode."""

from __future__ import annotations

import json

import pytest
from train_utils import metrics

from l3m.config import LogConfig
from l3m.train.api import train_main
from l3m.train.logging import MetricsFile, format_record, read_metrics, wandb_mode

pytestmark = pytest.mark.usefixtures("run_env")



def test_metrics_jsonl_records(llm, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=6", "train.log_every=3", "train.eval_every=3",
                                 "train.grad_clip=1.0"], output=str(run)) == 0
    records = read_metrics(run / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in records] == [("train", 3), ("val", 3), ("train", 6), ("val", 6)]
    train = records[0]
    for key in ("step", "epoch", "loss", "ce", "ppl", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu",
                "memory_bytes", "step_time_s", "eta_s", "time"):
        assert key in train, key
    assert train["loss"] == train["ce"]  # one loss term with weight 1
    assert train["tokens_per_s"] == pytest.approx(16 * train["samples_per_s"])  # seq_len 16, integer tokens only
    assert train["memory_bytes"] > 0 and 0 < train["mfu"] < 1 and train["lr"] > 0
    assert records[2]["eta_s"] == 0
    val = records[1]
    assert set(val) >= {"loss", "ce", "ppl", "samples"} and val["samples"] == 8  # eval_steps = 2 batches of 4
    assert "lr" not in val


def test_console_line_and_quiet_console(llm, tmp_path, capsys):
    assert train_main(str(llm), ["train.steps=2", "train.log_every=2", 'log.console="none"'],
                      output=str(tmp_path / "a")) == 0
    assert capsys.readouterr().out == ""
    line = format_record({"split": "train", "step": 5, "loss": 1.5, "ce": 1.5, "lr": 1e-3, "samples_per_s": 2000.0,
                          "tokens_per_s": 32000.0, "mfu": 0.25, "memory_bytes": 3 << 30, "eta_s": 75.0}, 10)
    for part in ("step 5/10", "loss 1.5000", "ce 1.5000", "lr 1.00e-03", "2.0k samples/s", "32.0k tok/s",
                 "mfu 25.00%", "mem 3.0GiB", "eta 1:15"):
        assert part in line, part
    assert "eval[val] @ step 5" in format_record({"split": "val", "step": 5, "loss": 1.0, "samples": 8}, 10)


def test_truncate_after(tmp_path):
    path = tmp_path / "m.jsonl"
    f = MetricsFile(path)
    for step in (1, 2, 3, 4):
        f.write({"split": "train", "step": step, "loss": float(step), "bad": float("nan")})
    f.close()
    with open(path, "a") as raw:
        raw.write('{"split": "train", "st')  # a line cut short by a kill
    assert MetricsFile.truncate_after(path, 2) == 3
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["bad"] is None  # strict JSON: NaN is written as null


def test_wandb_mode(monkeypatch):
    log = LogConfig()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key alone never takes a run online
    assert wandb_mode(log, {}) == "offline"
    assert wandb_mode(LogConfig(wandb="online"), {"wandb": "online"}) == "online"  # the file's word
    assert wandb_mode(LogConfig(wandb="disabled"), {"wandb": "disabled"}) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(log, {}) == "offline"  # the environment can only turn it down
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(LogConfig(wandb="online"), {"wandb": "online"}) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(LogConfig(wandb="online"), {"wandb": "online"}) == "disabled"


def test_wandb_offline_run_writes_locally(llm, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=2", 'log.wandb="offline"'], output=str(run)) == 0
    offline = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert offline[0].name.endswith(run_id)
    assert "wandb is off" not in capsys.readouterr().out
    # A resumed run continues the same wandb run.
    assert train_main(str(llm), ["train.steps=3", 'log.wandb="offline"'], output=str(run)) == 0
    assert (run / "wandb_id.txt").read_text().strip() == run_id
    assert json.loads((run / "resolved.json").read_text())["sections"]["log"]["wandb"] == "offline"
    assert metrics(run)[-1]["step"] == 3

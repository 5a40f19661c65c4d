"""The training loop on CPU: loss falls, accumulation, determinism, non-finite losses, eval, freezing."""

from __future__ import annotations

import json
import re

import pytest
import torch
from train_utils import final_weights, metrics, steps_saved

from l3m.train.api import eval_main, run_eval, train_main

pytestmark = pytest.mark.usefixtures("run_env")


def test_loss_falls_and_run_dir_is_complete(llm, tmp_path):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=30", "train.log_every=5"], output=str(run)) == 0
    losses = [r["loss"] for r in metrics(run)]
    assert [r["step"] for r in metrics(run)] == [5, 10, 15, 20, 25, 30]
    assert losses[-1] < losses[0] - 1.0, losses
    assert steps_saved(run) == [30]  # checkpoint_every = 0: only at the end
    for name in ("program.l3m", "resolved.json", "run.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    program = (run / "program.l3m").read_text()
    assert "train.steps=30" in program and program.endswith(llm.read_text())
    resolved = json.loads((run / "resolved.json").read_text())
    assert resolved["sections"]["train"]["steps"] == 30
    assert resolved["model_order"] == ["gpt.preprocessor.embed", "gpt.trunk.blocks", "gpt.head.lm"]
    ce = next(n for n in resolved["nodes"] if n["path"] == "loss.ce")
    assert ce["type"] == "LMCrossEntropy" and ce["reads"] == {"logits": "logits", "targets": "targets"}


def test_the_run_reproduces_from_its_own_directory(llm, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(str(llm), ["train.steps=3", "dim=16"], output=str(a)) == 0
    assert train_main(str(a / "program.l3m"), ["train.steps=3", "dim=16"], output=str(b)) == 0
    assert [r["loss"] for r in metrics(a)] == [r["loss"] for r in metrics(b)]


def test_default_output_is_runs_slash_stem(llm, tmp_path):
    assert train_main(str(llm), ["train.steps=1"]) == 0  # the working directory is tmp_path
    assert steps_saved(tmp_path / "runs" / "llm") == [1]


def test_same_file_and_seed_give_the_same_losses_bit_for_bit(llm, tmp_path):
    ov = ["train.steps=6", "train.deterministic=true"]
    assert train_main(str(llm), ov, output=str(tmp_path / "a")) == 0
    assert train_main(str(llm), ov, output=str(tmp_path / "b")) == 0
    assert train_main(str(llm), [*ov, "train.seed=1"], output=str(tmp_path / "c")) == 0
    la, lb, lc = ([r["loss"] for r in metrics(tmp_path / x)] for x in "abc")
    assert la == lb
    assert la != lc
    wa, wb = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.are_deterministic_algorithms_enabled()  # the global switch is restored afterwards


def test_grad_accum_matches_a_bigger_batch(llm, tmp_path):
    common = ["train.steps=3", "optimizer.lr=1e-3"]
    assert train_main(str(llm), [*common, "data.train.batch_size=4"], output=str(tmp_path / "big")) == 0
    # batch_size is the global batch: 4 samples per step as 2 micro-batches of 2 (micro_batch derives accum)
    assert train_main(str(llm), [*common, "data.train.batch_size=4", "train.micro_batch=2"],
                      output=str(tmp_path / "acc")) == 0
    big, acc = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-5, msg=k)
    lb, la = metrics(tmp_path / "big"), metrics(tmp_path / "acc")
    assert [round(r["loss"], 4) for r in lb] == [round(r["loss"], 4) for r in la]
    assert lb[0]["samples_per_s"] > 0 and la[0]["tokens_per_s"] > 0


def test_non_finite_loss_stops_with_step_and_term(llm, tmp_path, capsys):
    run = tmp_path / "run"
    code = train_main(str(llm), ["train.steps=10", "optimizer.lr=1e30", "train.checkpoint_every=1",
                                 "train.log_every=5"], output=str(run))
    assert code == 1
    err = capsys.readouterr()
    m = re.search(r"non-finite loss at step (\d+): loss term 'ce'", err.out + err.err)
    assert m, err
    bad = int(m.group(1))
    assert 1 < bad <= 10
    saved = steps_saved(run)
    assert all(s < bad for s in saved), (saved, bad)  # nothing saved from the bad step on
    for s in saved:  # and what was saved is finite
        from l3m.train.checkpoint import load_model_tensors

        tensors = load_model_tensors(run / "ckpt" / f"step_{s:06d}")
        assert all(torch.isfinite(t).all() for t in tensors.values())


def test_eval_on_held_out_sources_and_eval_command(digits, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(str(digits), [], output=str(run)) == 0
    evals = metrics(run, "test")
    assert [r["step"] for r in evals] == [15, 30]
    assert set(evals[-1]) >= {"loss", "ce", "acc", "samples"}
    assert evals[-1]["samples"] == 359  # the whole test split, padding left out
    assert evals[-1]["acc"] > 0.2  # 10 classes: better than chance
    assert not metrics(run, "train")[0].get("tokens_per_s")  # no integer keys read by the model
    step, results = run_eval(str(digits), [], str(run))
    assert step == 30
    assert results["test"]["loss"] == pytest.approx(evals[-1]["loss"], rel=1e-6)
    capsys.readouterr()
    assert eval_main(str(digits), [], str(run)) == 0
    assert "eval[test] @ step 30" in capsys.readouterr().out
    assert eval_main(str(digits), [], str(tmp_path / "nowhere")) == 2


def test_freeze_keeps_parameters_fixed(digits, tmp_path):
    run = tmp_path / "run"
    ov = ['train.freeze=["vit.preprocessor.*"]', "train.steps=4", "train.checkpoint_every=1", "train.keep=0",
          "train.eval_every=0"]
    assert train_main(str(digits), ov, output=str(run)) == 0
    from l3m.train.checkpoint import load_model_tensors

    first = load_model_tensors(run / "ckpt" / "step_000001")
    last = load_model_tensors(run / "ckpt" / "step_000004")
    frozen = [k for k in first if k.startswith("vit.preprocessor.")]
    assert frozen
    assert all(torch.equal(first[k], last[k]) for k in frozen)
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("vit.head."))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains(llm, tmp_path, dtype):
    run = tmp_path / "run"
    assert train_main(str(llm), ["train.steps=3", f"train.dtype={dtype}", "train.grad_clip=1.0"], output=str(run)) == 0
    rec = metrics(run)[-1]
    assert rec["loss"] == rec["loss"] and rec["grad_norm"] is not None
    state = json.loads((run / "ckpt" / "step_000003" / "state.json").read_text())["state"]
    assert ("scale" in state["scaler"]) == (dtype == "fp16")


def test_program_problems_exit_1_and_missing_file_exits_2(llm, tmp_path, capsys):
    assert train_main(str(tmp_path / "missing.l3m"), []) == 2
    no_train = tmp_path / "no_train.l3m"
    no_train.write_text(llm.read_text().replace("  train: ", "  other: "))
    assert train_main(str(no_train), [], output=str(tmp_path / "r")) == 1
    assert "error[E701]" in capsys.readouterr().err
    assert train_main(str(llm), ["train.stpes=3"], output=str(tmp_path / "r")) == 1
    assert "error[E501]" in capsys.readouterr().err  # a misspelt override, with its diagnostic


DIST_SCRIPT = """
import sys
from l3m.train.api import train_main

sys.exit(train_main(sys.argv[1], sys.argv[3:], output=sys.argv[2]))
"""


@pytest.mark.dist
def test_two_ranks_match_one_rank_with_the_global_batch(llm, tmp_path):
    """Under torchrun (gloo): the same file (batch_size = the global batch) on 2 ranks and on 1 gives
    the same losses and perplexities, train and eval, and the same weights; a checkpoint of the
    2-rank run resumes on 1 rank at the same global position and continues as the 2-rank run did."""
    import shutil
    import subprocess
    import sys

    from train_utils import child_env

    script = tmp_path / "launch.py"
    script.write_text(DIST_SCRIPT)
    common = ["train.steps=5", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=3",
              "data.train.batch_size=8", "train.deterministic=true"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(llm), str(tmp_path / "two"), *common]
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("step 5/5") == 1  # only rank 0 logs
    assert train_main(str(llm), common, output=str(tmp_path / "one")) == 0
    two, one = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt" / "step_000005").glob("rank_*.json")) == [
        "rank_0.json", "rank_1.json"]
    assert metrics(tmp_path / "two")[-1]["samples_per_s"] > 0
    for split, steps in (("train", [1, 2, 3, 4, 5]), ("val", [2, 4, 5])):
        m2, m1 = metrics(tmp_path / "two", split), metrics(tmp_path / "one", split)
        assert [r["step"] for r in m2] == [r["step"] for r in m1] == steps
        for r2, r1 in zip(m2, m1):
            for key in ("loss", "ce", "ppl"):
                assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-5), (split, r1["step"], key)
        if split == "val":
            assert {r["samples"] for r in m2} == {r["samples"] for r in m1} == {8}  # eval_steps = 2 batches of 4

    # Resume the 2-rank run's step-3 checkpoint on 1 rank: the same samples at steps 4 and 5.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "ckpt" / "step_000005")
    assert train_main(str(llm), common, output=str(resumed), resume=True) == 0
    m2, mr = metrics(tmp_path / "two"), metrics(resumed)
    assert [r["step"] for r in mr] == [1, 2, 3, 4, 5]
    for r2, rr in zip(m2[3:], mr[3:]):
        assert rr["loss"] == pytest.approx(r2["loss"], rel=1e-5, abs=1e-5) and rr["epoch"] == r2["epoch"]
    res = final_weights(resumed)
    for k in two:
        torch.testing.assert_close(res[k], two[k], rtol=1e-4, atol=1e-5, msg=k)

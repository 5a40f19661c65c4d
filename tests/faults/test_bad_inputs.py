"""Bad inputs get a clear error through the real CLI, never a traceback: labels past the head's
classes, a corrupt `init_from` file, a world size of 0, memory figures of a plan, and `--resume`
with nothing usable to resume from."""

from __future__ import annotations

import json
import re

import pytest
import torch
from bad_input_utils import make_cli, no_internal_error, program, with_opaque
from helpers import ROOT

from l3m.model.labels import GPU_CHECKS, LabelRangeError, check_labels
from l3m.model.losses import ClassificationCE, LMCrossEntropy


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    return make_cli(monkeypatch, tmp_path, capsys)


# -- labels out of range ---------------------------------------------------------------------------


def test_labels_past_the_heads_classes_are_a_lint_error(cli, tmp_path):
    code, _, err = cli("train", program(tmp_path, classes=20), "--output", tmp_path / "run")
    assert code == 1
    no_internal_error(err)
    assert ("prog.l3m:11:42: error[E753]: 'label' holds values up to 19 (written by 'data.train' (Synthetic)), "
            "but 'loss.ce' (ClassificationCE) accepts target < 10") in err


def test_labels_past_the_heads_classes_name_key_label_and_count(cli, tmp_path, monkeypatch):
    # Through a block that declares no shapes lint cannot know the labels' range: the step finds it.
    path = with_opaque(tmp_path, ("preprocessor  {", "preprocessor  { hide: Opaque() label -> label\n   "), classes=20,
                       monkeypatch=monkeypatch)
    code, _, err = cli("train", path, "--output", tmp_path / "run")
    assert code == 1
    no_internal_error(err)
    m = re.search(r"prog\.l3m:13:8: error\[E902\]: loss 'ce' \(ClassificationCE\) failed: key 'label' holds label "
                  r"(\d+), but 'logits' has 10 classes", err)
    assert m, err
    assert 10 <= int(m.group(1)) < 20
    assert "^^" in err  # the source line, with a caret under the loss


def test_label_check_low_high_ignored_and_soft_targets():
    loss = ClassificationCE()
    logits = torch.zeros(3, 5)
    with pytest.raises(LabelRangeError) as e:
        loss(logits, torch.tensor([0, -2, 4]))
    assert (e.value.label, e.value.classes, e.value.port) == (-2, 5, "target")
    assert float(loss(logits, torch.tensor([0, -100, 4]))) > 0  # cross_entropy's ignored index is fine
    loss(logits, torch.softmax(torch.randn(3, 5), -1))  # soft targets are not labels
    lm = LMCrossEntropy(ignore_index=-1)
    with pytest.raises(LabelRangeError) as e:
        lm(torch.zeros(2, 3, 7), torch.tensor([[1, 2, -1], [7, 0, 0]]))
    assert (e.value.label, e.value.classes, e.value.port) == (7, 7, "targets")


def test_label_check_on_an_accelerator_stops_after_the_first_batches():
    """On a device other than the CPU, the check (a host sync) runs for the first batches of each mode only."""
    module = torch.nn.Module()
    target = torch.tensor([1, 2]).to("meta")  # neither CPU nor checked: stands in for nothing to read back
    check_labels(module, target, 3)
    assert "_label_checks" not in module.__dict__  # meta tensors are never read
    if not torch.cuda.is_available():
        pytest.skip("no GPU: the per-mode counter is exercised on CUDA only")
    bad = torch.tensor([5], device="cuda")
    with pytest.raises(LabelRangeError):
        check_labels(module, bad, 3)
    for _ in range(GPU_CHECKS - 1):
        check_labels(module, torch.tensor([1], device="cuda"), 3)
    check_labels(module, bad, 3)  # past the first batches: no longer read back
    module.eval()
    with pytest.raises(LabelRangeError):  # evaluation has its own first batches
        check_labels(module, bad, 3)


# -- init_from -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ", bytes(range(256)) * 8],
                         ids=["empty", "truncated-header", "garbage"])
def test_corrupt_or_truncated_init_from_is_one_line(cli, tmp_path, content):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(content)
    code, _, err = cli("train", program(tmp_path), "--output", tmp_path / "run", f'train.init_from="{weights}"')
    assert code == 1
    no_internal_error(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "train.init_from" in lines[0] and "not a readable safetensors file (truncated or corrupt" in lines[0]


def test_truncated_safetensors_data_is_refused(tmp_path):
    from safetensors.torch import save_file

    from l3m.train.export import read_weights

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(1000)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_weights(cut)


# -- --world-size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "lint"])
@pytest.mark.parametrize("n", ["0", "-3", "two"])
def test_world_size_must_be_positive(cli, command, n, capsys):
    code, _, err = cli(command, ROOT / "examples" / "vit_digits.l3m", f"--world-size={n}")
    assert code == 2
    assert "--world-size" in err and ("positive" in err)


def test_world_size_as_a_separate_negative_argument(cli):
    code, _, err = cli("plan", ROOT / "examples" / "vit_digits.l3m", "--world-size", "-4")
    assert code == 2 and "must be a positive integer, got -4" in err


def test_graph_takes_no_world_size(cli):
    code, _, _ = cli("graph", ROOT / "examples" / "vit_digits.l3m", "--world-size", "0")
    assert code == 2


@pytest.mark.parametrize("setting", ["train.steps=-1", "train.log_every=-5", "train.num_workers=-1"])
def test_negative_counts_are_setting_errors(cli, tmp_path, setting):
    code, _, err = cli("train", program(tmp_path), "--output", tmp_path / "run", setting)
    assert code == 1
    no_internal_error(err)
    key, value = setting.split("=")
    assert f"error[E602]: '{key}' must be 0 or more, not {value}" in err


# -- plan figures ----------------------------------------------------------------------------------


def _plan(cli, *args):
    code, out, err = cli("plan", ROOT / "examples" / "vit_digits.l3m", "--format", "json", *args)
    return code, (json.loads(out) if code == 0 else None), err


@pytest.mark.parametrize("world", [1, 2, 8, 64, 4096])
def test_plan_memory_is_never_negative_and_shrinks_until_rows_run_out(cli, world):
    code, p, err = _plan(cli, "--world-size", world, f"data.train.batch_size={world * 4}")
    assert code == 0, err
    mem = p["memory_per_rank"]
    assert all(isinstance(v, int) and v > 0 for v in mem.values())
    assert mem["total"] == mem["params"] + mem["grads"] + mem["optimizer"]
    assert mem["params"] <= 4 * p["params"]["total"]  # never more than the unsharded fp32 parameters
    if world >= 64:  # dim-0 of every parameter (64 and fewer) is less than the ranks: padding is noted
        assert any("fewer rows than the" in n for n in p["notes"])


def test_plan_api_refuses_a_world_of_no_processes():
    from l3m.dsl import compile_file
    from l3m.plan import plan

    compiled = compile_file(str(ROOT / "examples" / "vit_digits.l3m"))
    for world in (0, -4):
        with pytest.raises(ValueError, match="positive number of processes"):
            plan(compiled.program, world_size=world)


def test_plan_refuses_more_tensor_parallel_ranks_than_heads(cli):
    code, _, err = cli("plan", ROOT / "examples" / "vit_digits.l3m", "--world-size", "8", "mesh.tp=4")
    assert code == 1
    no_internal_error(err)
    assert "error[E601]" in err and "key/value heads" in err and "(2) to divide by 4" in err


def test_plan_of_absurd_dimensions(cli):
    code, _, err = cli("plan", ROOT / "examples" / "vit_digits.l3m", "dim=1000000000")  # more bytes than torch counts
    assert code == 1
    no_internal_error(err)
    assert "error[E901]: block 'blocks' (Transformer) could not be built" in err
    code, out, err = cli("plan", ROOT / "examples" / "vit_digits.l3m", "dim=100000000")
    assert code == 0, err
    assert re.search(r"memory per rank\s+\d+\.\d\d EiB", out)  # not millions of TiB
    assert "more than any single accelerator holds" in out


# -- --resume without a usable checkpoint ----------------------------------------------------------


def test_resume_without_a_checkpoint_directory(cli, tmp_path):
    code, _, err = cli("train", program(tmp_path), "--output", tmp_path / "run", "--resume")
    assert code == 2
    no_internal_error(err)
    assert "no complete checkpoint to resume from" in err and "never saved a checkpoint" in err


def test_resume_lists_every_rejected_candidate(cli, tmp_path):
    ckpt = tmp_path / "run" / "ckpt"
    (ckpt / "step_000001").mkdir(parents=True)  # no marker
    (ckpt / "step_000001" / "state.json").write_text("{}")
    (ckpt / "step_000002").mkdir()
    (ckpt / "step_000002" / "COMPLETE").write_text("not json")
    (ckpt / "step_000003.tmp").mkdir()
    (ckpt / "step_000004").mkdir()
    (ckpt / "step_000004" / "COMPLETE").write_text(json.dumps({"files": {"state.json": {"size": 2, "sha256": "0"}}}))
    (ckpt / "notes.txt").write_text("mine")
    before = sorted(p.name for p in ckpt.iterdir())
    code, _, err = cli("train", program(tmp_path), "--output", tmp_path / "run", "--resume")
    assert code == 2
    no_internal_error(err)
    lines = {line.split(":")[0].strip(): line for line in err.splitlines() if line.startswith("  ")}
    assert "no COMPLETE marker" in lines["step_000001"]
    assert "unreadable COMPLETE marker" in lines["step_000002"]
    assert "unfinished write" in lines["step_000003.tmp"]
    assert "state.json is missing" in lines["step_000004"]
    assert "not a checkpoint" in lines["notes.txt"]
    assert sorted(p.name for p in ckpt.iterdir()) == before  # a failed resume moves nothing

"""The global batch: one file's batch_size is the samples of an optimizer step on any number of ranks.

Ranks are simulated (one loader per rank) so that these tests need no process group; the 2-rank
torchrun test is `tests/train/test_engine.py::test_two_ranks_match_one_rank_with_the_global_batch`.
"""

from __future__ import annotations

import pytest
import torch

from l3m.data import VALID_KEY, build_loader
from l3m.data.global_batch import derive_layout
from l3m.data.sources import Source
from l3m.dsl import compile_file
from l3m.model.metrics import Perplexity, TopKAccuracy
from l3m.plan import plan


class Numbered(Source):
    """Sample i is the number i (and a per-sample random draw, to see that augmentation follows the sample)."""

    outputs = ("idx", "noise")

    def __init__(self, n=50, batch_size=8, shuffle=True, drop_last=True):
        super().__init__(batch_size, shuffle, drop_last)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"idx": torch.tensor(i), "noise": torch.rand(())}

    def spec(self):
        return {"idx": ((), torch.long), "noise": ((), torch.float32)}


def _ranks(world, accum=1, *, n=50, batch=8, seed=3, workers=0, drop_last=True):
    return [build_loader(Numbered(n, batch, drop_last=drop_last), [], None, rank=r, world_size=world, seed=seed,
                         grad_accum=accum, num_workers=workers) for r in range(world)]


def _steps(loaders, steps):
    """Each step's samples, rank-major then micro-batch order: [[idx...] per step]."""
    accum = loaders[0].grad_accum
    out = []
    for _ in range(steps):
        step = []
        for loader in loaders:
            for _ in range(accum):
                step += next(loader)["idx"].tolist()
        out.append(step)
    return out


@pytest.mark.parametrize("world,accum", [(2, 1), (2, 2), (4, 1)])
def test_an_epoch_reads_every_sample_once_over_the_ranks(world, accum):
    loaders = _ranks(world, accum, n=50, batch=8)
    steps = _steps(loaders, loaders[0].sampler.num_steps())
    flat = [i for s in steps for i in s]
    assert len(steps) == 50 // 8 and all(len(s) == 8 for s in steps)
    assert len(flat) == len(set(flat)) == 48  # none twice; only the incomplete last global batch is left out
    assert all(0 <= i < 50 for i in flat)
    assert all(loader.state_dict()["batch"] == 6 and loader.state_dict()["micro"] == 0 for loader in loaders)


def test_the_samples_of_a_step_do_not_depend_on_the_world_size_or_accumulation():
    one = _steps(_ranks(1), 9)  # past the end of the first epoch
    for world, accum in ((2, 1), (2, 2), (4, 2), (1, 4)):
        assert _steps(_ranks(world, accum), 9) == one, (world, accum)


def test_per_sample_randomness_follows_the_sample_not_the_rank():
    def draws(loaders):
        accum = loaders[0].grad_accum
        out = {}
        for loader in loaders:
            for _ in range(2 * accum):
                b = next(loader)
                out.update(zip(b["idx"].tolist(), b["noise"].tolist()))
        return out

    a, b = draws(_ranks(1)), draws(_ranks(2, 2))
    assert a == b and len(a) == 16


@pytest.mark.parametrize("saved,resumed", [((2, 1), (1, 1)), ((1, 2), (4, 1)), ((4, 1), (2, 2))])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_under_another_world_size_continues_at_the_same_global_batch(saved, resumed, workers):
    reference = _steps(_ranks(1), 10)
    first = _ranks(*saved, workers=workers)
    assert _steps(first, 7) == reference[:7]  # across the epoch boundary (6 steps per epoch)
    state = first[0].state_dict()
    assert all(loader.state_dict() == state for loader in first)  # the position is the same on every rank
    assert (state["epoch"], state["batch"], state["micro"]) == (1, 1, 0)
    for loader in first:
        loader.close()
    again = _ranks(*resumed, workers=workers)
    for loader in again:
        loader.load_state_dict(state)
    assert _steps(again, 3) == reference[7:]
    for loader in again:
        loader.close()


def test_a_position_between_micro_batches_resumes_only_under_the_same_split():
    loader = _ranks(1, 2)[0]
    next(loader)  # half of step 1
    state = loader.state_dict()
    assert (state["batch"], state["micro"]) == (0, 1)
    same = _ranks(1, 2)[0]
    same.load_state_dict(state)
    assert torch.equal(next(same)["idx"], next(loader)["idx"])
    other = _ranks(2, 1)[0]
    with pytest.raises(ValueError, match="only with that split"):
        other.load_state_dict(state)


def test_a_global_batch_the_split_cannot_divide_is_a_clear_error():
    loader = build_loader(Numbered(50, 6), [], None, rank=0, world_size=4)
    with pytest.raises(ValueError, match="global batch 6 of Numbered does not split over 4"):
        next(loader)
    assert list(loader.iter_epoch_once())  # evaluation splits any global batch


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_sees_every_sample_once_in_the_same_global_batches(world):
    n, batch = 23, 8
    loaders = [build_loader(Numbered(n, batch, shuffle=False), [], None, rank=r, world_size=world, seed=3)
               for r in range(world)]
    per_rank = [list(loader.iter_epoch_once()) for loader in loaders]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == 3  # ceil(23 / 8) batches on every rank
    for s in range(3):
        real = [i for r in range(world) for i in per_rank[r][s]["idx"][per_rank[r][s][VALID_KEY]].tolist()]
        assert real == list(range(s * batch, min((s + 1) * batch, n)))  # global batch s, whatever the split


def test_drop_last_false_keeps_a_tail_that_splits():
    loaders = _ranks(2, 1, n=21, batch=8, drop_last=False)
    steps = _steps(loaders, 3)
    assert [len(s) for s in steps] == [8, 8, 5]  # the tail of 5 as 3 + 2
    assert len({i for s in steps for i in s}) == 21


def test_derive_layout():
    assert derive_layout(64, 4).micro == 16
    assert (derive_layout(64, 4, 2).micro, derive_layout(64, 4, 2).accum) == (8, 2)
    assert (derive_layout(64, 4, None, 4).micro, derive_layout(64, 4, None, 4).accum) == (4, 4)
    assert derive_layout(64, 4, 4, 4).accum == 4
    with pytest.raises(ValueError, match="not a multiple of 12"):
        derive_layout(64, 4, 3)
    with pytest.raises(ValueError, match="disagree"):
        derive_layout(64, 4, 2, 4)
    with pytest.raises(ValueError, match="micro-batches of 3"):
        derive_layout(64, 2, None, 3)


PROGRAM = """l3m 1
data { train: TextBytes(seq_len = 8, batch_size = BATCH) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW()
"""


def _compile(tmp_path, batch, extra=""):
    p = tmp_path / "g.l3m"
    p.write_text(PROGRAM.replace("BATCH", str(batch)) + extra)
    return p


def test_lint_reports_a_global_batch_a_static_mesh_cannot_divide(tmp_path):
    bad = compile_file(str(_compile(tmp_path, 12, "mesh { dp_replicate = 2, dp_shard = 4 }\n")))
    assert [d.code for d in bad.errors] == ["E604"] and "not a multiple of 8" in bad.errors[0].message
    assert bad.errors[0].span.line == 2
    assert compile_file(str(_compile(tmp_path, 16, "mesh { dp_replicate = 2, dp_shard = 4 }\n"))).ok
    # The mesh leaves the data-parallel size open: only what fails on any number of ranks.
    assert compile_file(str(_compile(tmp_path, 12, "train { grad_accum = 4 }\n"))).ok
    odd = compile_file(str(_compile(tmp_path, 12, "train { grad_accum = 5 }\n")))
    assert [d.code for d in odd.errors] == ["E604"]
    both = compile_file(str(_compile(tmp_path, 12, "train { grad_accum = 2, micro_batch = 4 }\n")))
    assert [d.code for d in both.errors] == ["E604"]
    for empty in (0, -4):  # on any number of ranks, lint says so (not only `train` once it builds)
        none = compile_file(str(_compile(tmp_path, empty)))
        assert [d.code for d in none.errors] == ["E604"] and "at least 1" in none.errors[0].message


def test_plan_prints_the_split_and_a_world_size_it_does_not_fit(tmp_path):
    path = str(_compile(tmp_path, 32, "train { grad_accum = 2 }\n"))
    p = plan(compile_file(path, world_size=4).program, world_size=4)
    assert p["batch"] == {"global": 32, "micro_per_rank": 4, "grad_accum": 2, "data_parallel": 4}
    assert [d.code for d in compile_file(path, world_size=3).errors] == ["E604"]


def test_metric_statistics_give_the_whole_batch_value_from_its_parts():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5, 11), torch.randint(0, 11, (6, 5))
    targets[0, :3] = -100  # parts with different token counts: per-part means would not average to the whole
    ppl = Perplexity()
    parts = [ppl.statistics(logits[:1], targets[:1])[0], ppl.statistics(logits[1:], targets[1:])[0]]
    total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    assert float(ppl.finish(total)) == pytest.approx(float(ppl(logits, targets)), rel=1e-6)
    assert float(ppl.finish(total)) != pytest.approx((float(ppl(logits[:1], targets[:1])) +
                                                      float(ppl(logits[1:], targets[1:]))) / 2, rel=1e-3)
    acc = TopKAccuracy(k=2)
    x, y = torch.randn(7, 4), torch.randint(0, 4, (7,))
    (hit_a, n_a), = acc.statistics(x[:3], y[:3])
    (hit_b, n_b), = acc.statistics(x[3:], y[3:])
    assert float((hit_a + hit_b) / (n_a + n_b)) == pytest.approx(float(acc(x, y)))


def test_the_trainer_derives_the_split_or_names_the_source(tmp_path):
    from l3m.config import TrainConfig
    from l3m.train.session import train_layout

    program = compile_file(str(_compile(tmp_path, 12, "train { micro_batch = 3 }\n"))).program
    node = next(n for n in program.of_role("source") if n.name == "train")
    train = TrainConfig(micro_batch=3)
    layout = train_layout(node, program, train, dp=2)
    assert (layout.micro, layout.accum, train.grad_accum) == (3, 2, 2)
    with pytest.raises(ValueError, match=r"g\.l3m:2:\d+: data source 'train': the global batch 12 is not a whole"):
        train_layout(node, program, TrainConfig(micro_batch=3), dp=8)

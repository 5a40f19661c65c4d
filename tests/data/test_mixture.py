"""`Mixture`: weights, the length of an epoch, determinism, exact resume, per-source counts, lint
(E831), and a session that trains from a mixture without evaluating on its parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l3m.data.loader import build_loader
from l3m.data.sources.base import Source
from l3m.data.sources.mixture import PERIOD, Mixture, assignment_pattern, mixture_counts


class Part(Source):
    """Sample i of part `tag` is `x = tag * 1000 + i` (so a batch tells where each sample came from)."""

    outputs = ("x", "y")

    def __init__(self, tag: int, n: int) -> None:
        super().__init__(batch_size=2)
        self.tag, self.n = tag, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor(self.tag * 1000 + i), "y": torch.rand(())}  # y: the loader's seeded randomness

    def spec(self):
        return {"x": ((), torch.long), "y": ((), torch.float32)}


def mixture(weights=(0.7, 0.3), sizes=(50, 10), **kw) -> Mixture:
    m = Mixture(sources=[f"p{k}" for k in range(len(sizes))], weights=list(weights), batch_size=4, **kw)
    return m.bind([(Part(k, n), {"x": "x", "y": "y"}) for k, n in enumerate(sizes)], ["x", "y"])


def drawn(m: Mixture) -> np.ndarray:
    return np.array([int(m[i]["x"]) for i in range(len(m))])


def test_every_prefix_of_the_pattern_holds_the_weights_to_within_one_draw():
    w = np.array([0.5, 0.3, 0.2])
    pat = assignment_pattern(list(w), period=1000)
    counts = np.stack([np.cumsum(pat == k) for k in range(3)], axis=1)
    expected = np.arange(1, 1001)[:, None] * w
    assert np.abs(counts - expected).max() <= 1.0
    assert np.bincount(pat).tolist() == [500, 300, 200]


def test_an_epoch_draws_every_sample_of_every_part_with_the_weights():
    m = mixture()  # p0: 50 samples at 0.7 (about 71 draws), p1: 10 at 0.3 (about 33): p0 decides
    x = drawn(m)
    p0, p1 = x[x < 1000], x[x >= 1000] - 1000
    assert np.bincount(p0).tolist() == [1] * 50  # p0 read exactly once
    assert x[-1] == 49 and 70 <= len(m) <= 72  # the epoch ends with p0's last sample: the shortest such
    assert set(p1.tolist()) == set(range(10))  # p1 wraps around, every sample at least once
    assert abs(len(p1) / len(x) - 0.3) <= 1 / len(x)
    assert len(mixture(num_samples=500)) == 500
    small = drawn(mixture(num_samples=10))
    assert (small < 1000).sum() == 7 and (small >= 1000).sum() == 3


def test_the_mixture_is_a_pure_function_of_the_index():
    a, b = mixture(sizes=(30, 7)), mixture(sizes=(30, 7))
    assert np.array_equal(drawn(a), drawn(b))
    big = mixture(weights=(1, 1), sizes=(3, 2), num_samples=3 * PERIOD)
    (k0, j0), (k1, j1) = big.locate(0), big.locate(PERIOD)  # the pattern repeats; draws keep counting
    assert k1 == k0 and j1 == (j0 + int(big.per_period[k0])) % 3
    counts = np.bincount([big.locate(i)[0] for i in range(0, 3 * PERIOD, 7)], minlength=2)
    assert abs(counts[0] - counts[1]) <= 2


def batches(loader, n: int) -> list[dict]:
    return [next(loader) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(p["x"], q["x"]) and torch.equal(p["y"], q["y"]) for p, q in zip(a, b, strict=True))


def test_batches_depend_on_the_seed_only_not_on_workers_and_resume_exactly():
    ref = batches(build_loader(mixture(), seed=3), 8)
    assert same(batches(build_loader(mixture(), seed=3, num_workers=2), 8), ref)
    assert not same(batches(build_loader(mixture(), seed=4), 8), ref)
    first = build_loader(mixture(), seed=3)
    batches(first, 5)
    resumed = build_loader(mixture(), seed=3)
    resumed.load_state_dict(first.state_dict())
    assert same(batches(resumed, 3), ref[5:])


def test_logged_counts_are_the_samples_the_loader_delivered():
    m = mixture(sizes=(30, 12))
    loader = build_loader(m, seed=1)
    seen = np.zeros(2, dtype=int)
    steps = 2 * len(m) // 4 + 3  # past the end of the first epoch
    for _ in range(steps):
        x = next(loader)["x"]
        seen += [(x < 1000).sum().item(), (x >= 1000).sum().item()]
        assert mixture_counts(loader) == {"data/p0": seen[0], "data/p1": seen[1]}
    assert loader.epoch >= 1
    resumed = build_loader(mixture(sizes=(30, 12)), seed=1)
    resumed.load_state_dict(loader.state_dict())
    assert mixture_counts(resumed) == {"data/p0": seen[0], "data/p1": seen[1]}  # survives a resume
    assert mixture_counts(build_loader(Part(0, 8), batch_size=2)) == {}


def test_bind_checks_what_the_parts_give():
    m = Mixture(sources=["a", "b"], weights=[1, 2])
    with pytest.raises(RuntimeError, match="no parts"):
        len(m)
    with pytest.raises(ValueError, match="'b' does not write z"):
        m.bind([(Part(0, 4), {"x": "x", "y": "z"}), (Part(1, 4), {"x": "x", "y": "y"})], ["x", "z"])
    with pytest.raises(ValueError, match="2 sources but 1 weights"):
        Mixture(sources=["a", "b"], weights=[1])
    with pytest.raises(ValueError, match="positive"):
        Mixture(sources=["a", "b"], weights=[1, 0])
    with pytest.raises(ValueError, match="below 1/"):
        Mixture(sources=["a", "b"], weights=[1, 1e-9])


class WidePart(Part):
    """Part whose `x` is a vector: batched with a scalar part, collate would fail in a worker."""

    def spec(self):
        return {"x": ((3,), torch.long), "y": ((), torch.float32)}


def test_bind_refuses_parts_whose_samples_cannot_be_batched_together():
    m = Mixture(sources=["a", "b"], weights=[1, 1])
    with pytest.raises(ValueError, match=r"'x' in different shapes: 'a' \[\] torch.int64, 'b' \[3\]"):
        m.bind([(Part(0, 4), {"x": "x", "y": "y"}), (WidePart(1, 4), {"x": "x", "y": "y"})], ["x", "y"])


# -- the language --------------------------------------------------------------------------------------

PROGRAM = """l3m 1
data {
  web:   Synthetic(kind = tokens, vocab = 32, seq_len = 8, length = 40, seed = 1) -> tokens, targets
  code:  Synthetic(kind = tokens, vocab = 32, seq_len = 8, length = 12, seed = 2) -> tokens, targets
  train: MIXTURE -> tokens, targets
  eval:  Synthetic(kind = tokens, vocab = 32, seq_len = 8, length = 8, batch_size = 4, seed = 3) -> tokens, targets
}
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 32, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2, causal = true) x -> x }
  head         { lm: LMHead(16, 32) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = 1e-3)
train { steps = 2, log_every = 1, eval_every = 0, checkpoint_every = 0 }
"""
GOOD = 'Mixture(sources = ["web", "code"], weights = [0.7, 0.3], batch_size = 4)'


def program(mix: str = GOOD) -> str:
    return PROGRAM.replace("MIXTURE", mix)


def errors(compiled) -> list:
    return [d for d in compiled.diagnostics if d.is_error]


def test_lint_accepts_a_mixture_of_data_entries(compile_text):
    assert errors(compile_text(program())) == []


@pytest.mark.parametrize("mix, message", [
    ('Mixture(sources = ["web", "cod"], weights = [0.7, 0.3])', "names 'cod', which is not an entry"),
    ('Mixture(sources = ["web", "code"], weights = [0.7])', "2 sources but 1 weights"),
    ('Mixture(sources = ["web", "code"], weights = [0.7, 0])', "must be positive"),
    ('Mixture(sources = ["web", "train"], weights = [1, 1])', "is a Mixture itself"),
    ('Mixture(sources = ["web", "eval", "web"], weights = [1, 1, 1])', "names 'web' twice"),
])
def test_lint_refuses_a_malformed_mixture(compile_text, mix, message):
    found = [d for d in errors(compile_text(program(mix))) if d.code == "E831"]
    assert found and message in found[0].message, [d.message for d in errors(compile_text(program(mix)))]
    if "cod'" in message:
        assert "code" in (found[0].help or "")
        assert found[0].span.line == 5 and found[0].span.col == program(mix).splitlines()[4].index("sources") + 1


def test_lint_refuses_a_part_without_the_mixtures_keys(compile_text):
    text = program().replace("seed = 2) -> tokens, targets", "seed = 2) -> tokens, (target = other)")
    text = text.replace("-> tokens, (target = other)", "-> (input = tokens, target = other)")
    found = [d for d in errors(compile_text(text)) if d.code == "E831"]
    assert found and "its source 'code' does not" in found[0].message and found[0].span.line == 4


def test_a_session_trains_on_the_mixture_and_evaluates_only_on_eval(tmp_path, monkeypatch, compile_text):
    from l3m.train.session import build_session, init_runtime, shutdown_runtime

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    compiled = compile_text(program())
    rt = init_runtime()
    session = build_session(compiled, rt)
    try:
        assert sorted(session.eval_loaders) == ["eval"]  # web and code are parts, not sources of their own
        source = session.train_loader.source
        assert isinstance(source, Mixture) and source.locate(len(source) - 1) == (0, 39)  # web's last decides
        batch = next(session.train_loader)
        assert batch["tokens"].shape == (4, 8) and set(batch) >= {"tokens", "targets"}
        assert sum(mixture_counts(session.train_loader).values()) == 4
    finally:
        session.close()
        shutdown_runtime(rt)

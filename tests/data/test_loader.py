"""The loader: rank shards, key renaming, epochs, exact resumption, evaluation passes."""

import warnings

import pytest
import torch

from l3m.data import VALID_KEY, build_loader
from l3m.data.generators import RandomMask, RandomPrefixLength
from l3m.data.loader import shard_indices
from l3m.data.sources import Source


class Noisy(Source):
    """Index plus a random 'augmentation' drawn from torch's global generator."""

    outputs = ("idx", "noise")

    def __init__(self, n=23, batch_size=3, shuffle=True, drop_last=True):
        super().__init__(batch_size, shuffle, drop_last)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"idx": torch.tensor(i), "noise": torch.rand(2)}

    def spec(self):
        return {"idx": ((), torch.long), "noise": ((2,), torch.float32)}


GENS = [
    (RandomMask(num_tokens=6, ratio=0.5), ["i"], ["mask"]),
    (RandomPrefixLength(high=4), {"x": "i"}, {"prefix_len": "p"}),
]


def _loader(src=None, **kw):
    kw.setdefault("seed", 5)
    return build_loader(src or Noisy(), GENS, {"idx": "i", "noise": "z"}, **kw)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_batches_are_keyed_by_data_keys_with_generator_outputs():
    batch = next(iter(_loader()))
    assert set(batch) == {"i", "z", "mask", "p"}
    assert batch["i"].shape == (3,) and batch["z"].shape == (3, 2)
    assert batch["mask"].shape == (3, 6) and batch["mask"].sum(1).tolist() == [3, 3, 3]
    assert ((batch["p"] >= 1) & (batch["p"] <= 4)).all()


def test_unknown_port_is_an_error_and_unmapped_ports_are_dropped():
    with pytest.raises(ValueError, match="no port"):
        build_loader(Noisy(), [], {"image": "x"})
    batch = next(build_loader(Noisy(), [], {"idx": "i"}))
    assert set(batch) == {"i"}


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_shards(world_size):
    n, bs = 23, 2  # bs per rank; the source's batch_size is the global batch
    seen = []
    for rank in range(world_size):
        loader = build_loader(Noisy(n, bs * world_size), [], None, rank=rank, world_size=world_size, seed=1)
        idx = torch.cat([b["idx"] for b in _take(loader, loader.batches_per_epoch)]).tolist()
        assert loader.batches_per_epoch == n // (bs * world_size)
        seen.append(idx)
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat))  # disjoint
    shards = [
        shard_indices(n, 0, seed=1, shuffle=True, rank=r, world_size=world_size, pad=False)[0]
        for r in range(world_size)
    ]
    assert sorted(torch.cat(shards).tolist()) == sorted(set(torch.cat(shards).tolist()))
    assert len(torch.cat(shards)) == (n // world_size) * world_size


def test_epochs_roll_over_and_reshuffle():
    loader = _loader(Noisy(12, 3))
    assert loader.batches_per_epoch == 4
    e0 = torch.cat([b["i"] for b in _take(loader, 4)])
    e1 = torch.cat([b["i"] for b in _take(loader, 4)])
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batch"] == 4
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(12))
    assert not torch.equal(e0, e1)
    again = torch.cat([b["i"] for b in _take(_loader(Noisy(12, 3)), 4)])
    assert torch.equal(e0, again)  # same seed, same run


def test_no_shuffle_and_no_drop_last():
    loader = build_loader(Noisy(7, 3), [], None, shuffle=False, drop_last=False)
    batches = _take(loader, 3)
    assert [b["idx"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("k", [3, 9])  # mid-epoch, and past the first epoch's end (7 batches)
def test_exact_resume(num_workers, k):
    reference = _take(_loader(num_workers=num_workers), k + 5)
    first = _loader(num_workers=num_workers)
    assert _same(_take(first, k), reference[:k])
    state = first.state_dict()
    first.close()
    resumed = _loader(num_workers=num_workers)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 5), reference[k:])
    resumed.close()


def test_workers_and_main_process_produce_identical_batches():
    assert _same(_take(_loader(num_workers=0), 4), _take(_loader(num_workers=2), 4))


def test_per_sample_randomness_follows_seed_epoch_index_not_position():
    src = Noisy(12, 4)
    a = build_loader(src, [], None, rank=0, world_size=2, seed=9)
    b = build_loader(src, [], None, rank=0, world_size=1, seed=9)
    noise_a = {int(i): z for bt in _take(a, 2) for i, z in zip(bt["idx"], bt["noise"])}
    noise_b = {int(i): z for bt in _take(b, 3) for i, z in zip(bt["idx"], bt["noise"])}
    assert noise_a and all(torch.equal(z, noise_b[i]) for i, z in noise_a.items())


def test_generator_randomness_differs_by_rank_and_step():
    m0 = [b["mask"] for b in _take(_loader(Noisy(40, 4)), 2)]
    m1 = [b["mask"] for b in _take(_loader(Noisy(40, 4), rank=1, world_size=2), 1)]
    assert not torch.equal(m0[0], m0[1]) and not torch.equal(m0[0], m1[0])


def test_loader_leaves_global_rng_alone():
    state = torch.get_rng_state()
    _take(_loader(), 3)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_pass_sees_every_sample_once_with_equal_batches_per_rank(num_workers):
    n, world_size = 10, 3
    counts, real = [], []
    for rank in range(world_size):
        loader = _loader(Noisy(n, 6), rank=rank, world_size=world_size, num_workers=num_workers)
        next(loader)
        position = loader.state_dict()
        batches = list(loader.iter_epoch_once())
        counts.append(len(batches))
        for b in batches:
            assert b[VALID_KEY].dtype == torch.bool and "mask" in b
            real += b["i"][b[VALID_KEY]].tolist()
        assert loader.state_dict() == position
        assert _same(list(loader.iter_epoch_once()), batches)  # deterministic
        loader.close()
    assert len(set(counts)) == 1
    assert sorted(real) == list(range(n))


def test_state_errors_and_layout_warning():
    loader = _loader()
    with pytest.raises(ValueError, match="does not fit"):
        loader.load_state_dict({"epoch": 0, "batch": 99})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader.load_state_dict({**loader.state_dict(), "world_size": 4})  # the position is global: no loss
        assert not caught
        loader.load_state_dict({**loader.state_dict(), "seed": 4})
    assert any("will not match" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="not one global batch"):
        build_loader(Noisy(3, 4), [], None, world_size=2)

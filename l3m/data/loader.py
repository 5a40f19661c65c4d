"""The loader: a source, sharded across ranks, batched, run through generators, resumable.

Every batch is a pure function of (seed, epoch, batch index, rank, world size), so the loader's
whole state is two integers, `(epoch, batch)`: a resumed run rebuilds the loader, loads them,
and its sampler starts at the saved batch; nothing is replayed, with or without worker
processes. The pieces:

- the epoch's order: a permutation seeded by (seed, epoch) (or the identity), cut into
  `world_size` disjoint, equal shards, one per rank (like DistributedSampler, but resumable);
- per-sample randomness (augmentations in a source's transform): torch's global generator,
  seeded by (seed, epoch, index) around each `source[index]`, so a sample's augmentation does
  not depend on which worker or rank loads it;
- per-batch randomness (generators): a `torch.Generator` seeded by (seed, rank, epoch, batch).

Batches are dicts keyed by data keys: the source's ports renamed by `port_to_key`, plus the
generators' outputs. Evaluation batches (`iter_epoch_once`) also carry `VALID_KEY`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

# Evaluation batches carry bool [B] under this key: False marks the wrap-around samples that
# give every rank the same number of batches (so collective ops never wait on a missing batch).
VALID_KEY = "_valid"
_EVAL_EPOCH = -1  # the epoch number evaluation batches are seeded with
_MASK64 = (1 << 64) - 1

GeneratorSpec = tuple[Any, Sequence[str] | Mapping[str, str], Sequence[str] | Mapping[str, str]]


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (splitmix64 chained over the parts)."""
    h = 0
    for p in parts:
        x = ((h ^ (p & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = x ^ (x >> 31)
    return h >> 1


def shard_indices(
    n: int, epoch: int, *, seed: int, shuffle: bool, rank: int, world_size: int, pad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's sample indices for an epoch and which of them are real (not padding).

    Ranks take every `world_size`-th index of the epoch's order, starting at `rank`. With
    `pad=False` the tail that does not divide evenly is dropped (training); with `pad=True` the
    order wraps around to fill it and the filler is marked invalid (evaluation sees every sample).
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    else:
        order = torch.arange(n)
    valid = torch.ones(n, dtype=torch.bool)
    if pad:
        total = math.ceil(n / world_size) * world_size
        extra = torch.arange(total - n) % n
        order = torch.cat([order, order[extra]])
        valid = torch.cat([valid, torch.zeros(total - n, dtype=torch.bool)])
    else:
        total = (n // world_size) * world_size
    return order[rank:total:world_size], valid[rank:total:world_size]


class ResumableBatchSampler(Sampler):
    """Yields one rank's batches of an epoch, from batch `start` on, as lists of
    `(epoch, batch, index, valid)` so that workers can seed per-sample randomness."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = (
            n,
            batch_size,
            seed,
            shuffle,
            drop_last,
        )
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start, self.eval = 0, 0, False

    def num_batches(self, eval: bool | None = None) -> int:
        eval = self.eval if eval is None else eval
        per_rank = math.ceil(self.n / self.world_size) if eval else self.n // self.world_size
        if eval or not self.drop_last:
            return math.ceil(per_rank / self.batch_size)
        return per_rank // self.batch_size

    def __len__(self) -> int:
        return max(self.num_batches() - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int, int, bool]]]:
        epoch = _EVAL_EPOCH if self.eval else self.epoch
        idx, valid = shard_indices(
            self.n,
            epoch,
            seed=self.seed,
            shuffle=self.shuffle and not self.eval,
            rank=self.rank,
            world_size=self.world_size,
            pad=self.eval,
        )
        bs = self.batch_size
        for b in range(self.start, self.num_batches()):
            sl = slice(b * bs, (b + 1) * bs)
            yield [(epoch, b, int(i), bool(v)) for i, v in zip(idx[sl], valid[sl])]


class _SeededSamples(Dataset):
    """Fetches `source[index]` with torch's global generator seeded by (seed, epoch, index)."""

    def __init__(self, source: Dataset, seed: int) -> None:
        self.source, self.seed = source, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int, int, bool]) -> tuple[tuple[int, int, bool], dict]:
        epoch, batch, index, valid = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index))
            sample = self.source[index]
        return (epoch, batch, valid), sample


class BatchAssembler:
    """Collates samples, renames ports to keys and runs the generators (in the worker process)."""

    def __init__(
        self,
        port_to_key: Mapping[str, str] | None,
        generators: Sequence[GeneratorSpec],
        *,
        seed: int,
        rank: int,
        with_valid: bool = False,
    ) -> None:
        self.port_to_key = dict(port_to_key) if port_to_key is not None else None
        self.generators = list(generators)
        self.seed, self.rank, self.with_valid = seed, rank, with_valid

    def __call__(self, items: list[tuple[tuple[int, int, bool], dict]]) -> dict[str, torch.Tensor]:
        (epoch, batch, _), _ = items[0]
        samples = default_collate([s for _, s in items])
        if self.port_to_key is None:
            out = dict(samples)
        else:
            out = {key: samples[port] for port, key in self.port_to_key.items()}
        rng = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, epoch, batch))
        for gen, in_keys, out_keys in self.generators:
            run_generator(gen, in_keys, out_keys, out, rng)
        if self.with_valid:
            out[VALID_KEY] = torch.tensor([v for (_, _, v), _ in items], dtype=torch.bool)
        return out


def run_generator(
    gen: Any,
    in_keys: Sequence[str] | Mapping[str, str],
    out_keys: Sequence[str] | Mapping[str, str],
    batch: dict[str, torch.Tensor],
    rng: torch.Generator,
) -> None:
    """Call `gen` on the batch's keys and write its outputs into `batch`.

    Keys are given in port order (a list) or by port name (a dict `{port: key}`).
    """
    if isinstance(in_keys, Mapping):
        result = gen(**{port: batch[key] for port, key in in_keys.items()}, rng=rng)
    else:
        result = gen(*(batch[key] for key in in_keys), rng=rng)
    values = result if isinstance(result, tuple) else (result,)
    ports = [p.rstrip("?") for p in getattr(gen, "outputs", ())] or [str(i) for i in range(len(values))]
    by_port = dict(zip(ports, values))
    if isinstance(out_keys, Mapping):
        for port, key in out_keys.items():
            batch[key] = by_port[port]
    else:
        for key, value in zip(out_keys, values):
            batch[key] = value


class StatefulLoader:
    """An endless iterator over one rank's training batches, epoch after epoch, and its state.

    `state_dict()` is `{"epoch", "batch"}` (batches consumed in the epoch) plus the layout it
    was taken under; after `load_state_dict` the next batch is exactly the one an uninterrupted
    loader would have produced. `iter_epoch_once()` walks the whole source once for evaluation.
    """

    def __init__(
        self,
        source: Any,
        generators: Sequence[GeneratorSpec] = (),
        port_to_key: Mapping[str, str] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool | None = None,
        shuffle: bool | None = None,
        batch_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        ports = set(source.spec()) if hasattr(source, "spec") else None
        if port_to_key is not None and ports is not None:
            unknown = sorted(set(port_to_key) - ports)
            if unknown:
                raise ValueError(
                    f"{type(source).__name__} has no port(s) {', '.join(unknown)}; it has {', '.join(sorted(ports))}"
                )
        self.source, self.seed, self.rank, self.world_size = source, seed, rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.batch_size = batch_size or getattr(source, "batch_size", 1)
        drop_last = getattr(source, "drop_last", True) if drop_last is None else drop_last
        shuffle = getattr(source, "shuffle", True) if shuffle is None else shuffle
        self.port_to_key, self.generators = port_to_key, list(generators)
        self.sampler = ResumableBatchSampler(
            len(source),
            self.batch_size,
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        if self.sampler.num_batches() == 0:
            raise ValueError(
                f"{type(source).__name__} has {len(source)} samples: not one batch of {self.batch_size} "
                f"for each of {world_size} rank(s)"
            )
        self.epoch, self.batch = 0, 0
        self._loader: DataLoader | None = None  # made on first use; holds the persistent workers
        self._it: Iterator | None = None

    def _data_loader(
        self, sampler: ResumableBatchSampler, *, with_valid: bool, persistent: bool
    ) -> DataLoader:
        return DataLoader(
            _SeededSamples(self.source, self.seed),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=BatchAssembler(
                self.port_to_key, self.generators, seed=self.seed, rank=self.rank, with_valid=with_valid
            ),
            pin_memory=self.pin_memory,
            persistent_workers=persistent,
            # Worker seeds come from here, not from torch's global generator (model init stays untouched).
            generator=torch.Generator().manual_seed(self.seed),
        )

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.num_batches(eval=False)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> StatefulLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self.sampler.epoch, self.sampler.start, self.sampler.eval = self.epoch, self.batch, False
            if self._loader is None:
                self._loader = self._data_loader(
                    self.sampler, with_valid=False, persistent=self.num_workers > 0
                )
            self._it = iter(self._loader)
        try:
            out = next(self._it)
        except StopIteration:  # only if the sampler and the counters disagree; start the next epoch
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
            return next(self)
        self.batch += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_samples": len(self.source),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        layout = {k: state[k] for k in ("seed", "world_size", "num_samples", "batch_size") if k in state}
        now = {k: v for k, v in self.state_dict().items() if k in layout}
        if layout != now:
            warnings.warn(
                f"resuming a loader saved with {layout} under {now}: batches will not match the original run",
                stacklevel=2,
            )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(
                f"loader state (epoch {epoch}, batch {batch}) does not fit {self.batches_per_epoch} batches"
            )
        self.epoch, self.batch, self._it = epoch, batch, None

    def iter_epoch_once(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every sample once, in order, sharded over ranks, each batch with `VALID_KEY`.

        All ranks get the same number of batches; the training position is left untouched.
        """
        sampler = ResumableBatchSampler(
            len(self.source),
            self.batch_size,
            seed=self.seed,
            shuffle=False,
            drop_last=False,
            rank=self.rank,
            world_size=self.world_size,
        )
        sampler.eval = True
        yield from self._data_loader(sampler, with_valid=True, persistent=False)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected).

        The position is kept: the next batch starts new workers and continues from it.
        """
        self._it, self._loader = None, None


def build_loader(
    source: Any,
    generators: Sequence[GeneratorSpec] = (),
    port_to_key: Mapping[str, str] | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool | None = None,
    shuffle: bool | None = None,
    pin_memory: bool = False,
) -> StatefulLoader:
    """A `StatefulLoader` over `source` for one rank.

    `generators` are `(generator, in_keys, out_keys)` triples run in order on each batch;
    `port_to_key` renames the source's ports to data keys (ports it leaves out are dropped; None
    keeps the port names). `drop_last` and `shuffle` default to the source's own settings.
    """
    return StatefulLoader(
        source,
        generators,
        port_to_key,
        rank=rank,
        world_size=world_size,
        seed=seed,
        num_workers=num_workers,
        drop_last=drop_last,
        shuffle=shuffle,
        pin_memory=pin_memory,
    )

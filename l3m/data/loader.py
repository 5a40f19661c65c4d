"""The loader: a source, cut into global batches, split over ranks, run through generators, resumable.

Every batch is a pure function of (seed, epoch, position in the epoch, rank layout), so the
loader's whole state is a few integers, `(epoch, batch, micro)`: a resumed run rebuilds the
loader, loads them, and its sampler starts at the saved position; nothing is replayed, with or
without worker processes. The pieces:

- the epoch's order: a permutation seeded by (seed, epoch) (or the identity), cut into global
  batches (the source's `batch_size`: the samples of one optimizer step, all ranks together);
  rank r takes the r-th equal part of each, drawn as `grad_accum` micro-batches. The samples of
  step s do not depend on the number of ranks, and a position saved between steps continues
  exactly under another world size;
- per-sample randomness (augmentations in a source's transform): torch's global generator,
  seeded by (seed, epoch, index) around each `source[index]`, so a sample's augmentation does
  not depend on which worker or rank loads it;
- per-batch randomness (generators): a `torch.Generator` seeded by (seed, epoch, the micro-batch's
  number in the epoch), so equal micro-batch layouts (2 ranks × 1, or 1 rank × 2 micro-batches)
  draw alike.

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

from l3m.data.errors import DataError, DataErrorLimit

# Evaluation batches carry bool [B] under this key: False marks the wrap-around samples that
# give every rank the same number of batches (so collective ops never wait on a missing batch).
VALID_KEY = "_valid"
# Bad samples travel from the workers under these keys, which the loader removes from the batch.
_ERROR_KEY = "_data_error"  # "raise": the message of the sample that failed
_SKIPPED_KEY = "_data_skipped"  # "skip": (how many were replaced, the last message)
_MAX_REPLACEMENTS = 64  # bad samples in a row before "skip" gives up
MIN_ERROR_WINDOW = 1000  # max_error_fraction is measured over at least this many samples
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


def epoch_order(n: int, epoch: int, *, seed: int, shuffle: bool) -> torch.Tensor | range:
    """The epoch's order of the `n` sample indices: a permutation seeded by (seed, epoch), or the identity.

    The permutation is held as int32 (the same permutation as int64: 4 bytes per sample, 120 MiB for
    31M windows of a 2 GB byte corpus) and the identity as a `range` (no memory at all).
    """
    if shuffle:
        dtype = torch.int32 if n < 2**31 else torch.int64
        return torch.randperm(n, dtype=dtype, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    return range(n)


def split_positions(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """`[start, stop)` cut into `parts` consecutive pieces whose sizes differ by at most one
    (the first ones larger), as `(begin, end)` pairs."""
    size, extra = divmod(stop - start, parts)
    out, at = [], start
    for i in range(parts):
        end = at + size + (1 if i < extra else 0)
        out.append((at, end))
        at = end
    return out


def shard_indices(
    n: int, epoch: int, *, seed: int, shuffle: bool, rank: int, world_size: int, pad: bool,
    global_batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's sample indices for a whole epoch and which of them are real (not padding).

    The epoch's order is cut into global batches of `global_batch` samples (default: the world
    size, one sample per rank); rank r takes the r-th of `world_size` equal parts of each. With
    `pad=False` (training) the incomplete last global batch is dropped; with `pad=True` it is
    filled by wrapping around the order and the filler is marked invalid.
    """
    g = global_batch or world_size
    if g % world_size:
        raise ValueError(f"a global batch of {g} does not split over {world_size} ranks")
    order = epoch_order(n, epoch, seed=seed, shuffle=shuffle)
    order = torch.arange(n) if isinstance(order, range) else order.long()
    total = math.ceil(n / g) * g if pad else (n // g) * g
    pos = torch.arange(total)
    idx, valid = order[pos % n], pos < n
    part = g // world_size
    mine = (pos % g) // part == rank
    return idx[mine], valid[mine]


class ResumableBatchSampler(Sampler):
    """Yields one rank's micro-batches of an epoch, from micro-batch `start` on, as lists of
    `(epoch, batch id, index, valid)` so that workers can seed per-sample randomness.

    Training: the epoch's (seeded) order is cut into global batches of `batch_size` samples;
    global batch s is cut into `world_size` equal parts, one per rank, and each part into
    `grad_accum` micro-batches. The samples of optimizer step s are therefore the same on any
    number of ranks, and position k (micro-batches consumed on each rank) means global batch
    k // grad_accum. The incomplete last global batch is dropped (`drop_last`) or split as
    evenly as it goes (a piece left empty drops it). The batch id (which seeds the generators)
    numbers the micro-batches of the epoch in (step, rank, micro-batch) order: equal layouts draw
    alike, and one rank without accumulation numbers them by step, as before the batch was global.

    Evaluation (`eval`): global batches in order; each rank takes its part of each (at most
    ceil(batch_size / world_size) samples); a rank left without a real sample gets one
    wrap-around sample marked invalid, so every rank runs the same number of batches.
    """

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
        grad_accum: int = 1,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = (
            n,
            batch_size,
            seed,
            shuffle,
            drop_last,
        )
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.epoch, self.start, self.eval = 0, 0, False

    @property
    def parts(self) -> int:
        """Micro-batches per global batch, all ranks together."""
        return self.world_size * self.grad_accum

    def num_steps(self, eval: bool | None = None) -> int:
        """Global batches in an epoch."""
        eval = self.eval if eval is None else eval
        full, rest = divmod(self.n, self.batch_size)
        if eval:
            return full + (rest > 0)
        return full + (not self.drop_last and rest >= self.parts)

    def num_batches(self, eval: bool | None = None) -> int:
        """Batches one rank draws in an epoch (micro-batches in training)."""
        eval = self.eval if eval is None else eval
        return self.num_steps(eval) * (1 if eval else self.grad_accum)

    def __len__(self) -> int:
        return max(self.num_batches() - self.start, 0)

    def _train_piece(self, k: int) -> tuple[int, int]:
        step, micro = divmod(k, self.grad_accum)
        begin = step * self.batch_size
        end = min(begin + self.batch_size, self.n)
        piece = self.rank * self.grad_accum + micro
        if end - begin == self.batch_size:
            m = self.batch_size // self.parts
            return begin + piece * m, begin + (piece + 1) * m
        return split_positions(begin, end, self.parts)[piece]

    def __iter__(self) -> Iterator[list[tuple[int, int, int, bool]]]:
        if self.eval:
            yield from self._eval_batches()
            return
        order = epoch_order(self.n, self.epoch, seed=self.seed, shuffle=self.shuffle)
        for k in range(self.start, self.num_batches()):
            a, b = self._train_piece(k)
            step, micro = divmod(k, self.grad_accum)
            bid = step * self.parts + self.rank * self.grad_accum + micro  # one rank, no accumulation: the step
            yield [(self.epoch, bid, int(order[p]), True) for p in range(a, b)]

    def _eval_batches(self) -> Iterator[list[tuple[int, int, int, bool]]]:
        order = epoch_order(self.n, _EVAL_EPOCH, seed=self.seed, shuffle=False)
        part = math.ceil(self.batch_size / self.world_size)
        for s in range(self.start, self.num_steps(eval=True)):
            begin = s * self.batch_size + self.rank * part
            end = min(begin + part, (s + 1) * self.batch_size, self.n)
            bid = s * self.world_size + self.rank
            if end > begin:
                yield [(_EVAL_EPOCH, bid, int(order[p]), True) for p in range(begin, end)]
            else:  # nothing real left for this rank in this batch: one invalid filler keeps the ranks in step
                yield [(_EVAL_EPOCH, bid, int(order[begin % self.n]), False)]


class _SeededSamples(Dataset):
    """Fetches `source[index]` with torch's global generator seeded by (seed, epoch, index).

    A sample that raises `DataError` is, with `on_error = "skip"`, replaced by the next index that
    loads (seeded by its own index), so the batch keeps its shape and a resumed run meets the same
    replacement; the item then carries how many were skipped and the last message. With "raise"
    the message travels to the main process in place of the sample (see `BatchAssembler`), so
    that it arrives as one line, not as a worker's traceback.
    """

    def __init__(self, source: Dataset, seed: int, on_error: str = "raise") -> None:
        self.source, self.seed, self.skip = source, seed, on_error == "skip"

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, epoch: int, index: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index))
            return self.source[index]

    def __getitem__(self, item: tuple[int, int, int, bool]) -> tuple[tuple[int, int, bool, int, str], dict | None]:
        epoch, batch, index, valid = item
        n, skipped, last = len(self.source), 0, ""
        for attempt in range(min(n, _MAX_REPLACEMENTS) if self.skip else 1):
            try:
                return (epoch, batch, valid, skipped, last), self._load(epoch, (index + attempt) % n)
            except DataError as e:
                skipped, last = skipped + 1, str(e)
        if self.skip:
            last = f"{skipped} samples in a row from index {index} could not be read; the last: {last}"
        return (epoch, batch, valid, -1, last), None


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

    def __call__(self, items: list[tuple[tuple[int, int, bool, int, str], dict | None]]) -> dict[str, Any]:
        (epoch, batch, *_), _ = items[0]
        failed = [meta[4] for meta, s in items if s is None]
        if failed:  # the loader raises it in the main process
            return {_ERROR_KEY: failed[0]}
        samples = default_collate([s for _, s in items])
        if self.port_to_key is None:
            out = dict(samples)
        else:
            out = {key: samples[port] for port, key in self.port_to_key.items()}
        rng = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, epoch, batch))
        for gen, in_keys, out_keys in self.generators:
            run_generator(gen, in_keys, out_keys, out, rng)
        if self.with_valid:
            out[VALID_KEY] = torch.tensor([meta[2] for meta, _ in items], dtype=torch.bool)
        skipped = [meta for meta, _ in items if meta[3] > 0]
        if skipped:
            out[_SKIPPED_KEY] = (sum(m[3] for m in skipped), skipped[-1][4])
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

    `state_dict()` is `{"epoch", "batch", "micro"}` (global batches consumed in the epoch, and
    micro-batches of the next one) plus the layout it was taken under, and the bad-data counts (`data_errors`, `samples_seen`); after
    `load_state_dict` the next batch is exactly the one an uninterrupted loader would have produced. `iter_epoch_once()` walks the whole source once for evaluation.
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
        on_error: str = "raise",
        max_error_fraction: float = 0.01,
        grad_accum: int = 1,
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
        self.batch_size = batch_size or getattr(source, "batch_size", 1)  # the global batch
        self.grad_accum = max(1, grad_accum)
        self.micro_batch, rest = divmod(self.batch_size, world_size * self.grad_accum)
        # Only training needs the split; an evaluation source splits its global batch as it goes.
        self._split_error = "" if not rest else (
            f"the global batch {self.batch_size} of {type(source).__name__} does not split over {world_size} "
            f"data-parallel rank(s) × {self.grad_accum} accumulation step(s): it is not a multiple of "
            f"{world_size * self.grad_accum}")
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
            grad_accum=self.grad_accum,
        )
        if self.sampler.num_batches(eval=False) == 0:
            raise ValueError(
                f"{type(source).__name__} has {len(source)} samples: not one global batch of {self.batch_size}"
            )
        self.epoch, self.batch = 0, 0
        self.set_error_policy(on_error, max_error_fraction)
        # Bad samples replaced so far in training and samples delivered (both part of the state);
        # what the source's index left out (`l3m.data.errors.scan_policy`) counts with the first batch.
        self.data_errors, self.samples_seen = 0, 0
        # Every rank indexes every file: rank 0 alone counts the omissions (the log sums over ranks).
        self._scan_errors = len(getattr(source, "scan_errors", ())) if rank == 0 else 0
        self._loader: DataLoader | None = None  # made on first use; holds the persistent workers
        self._it: Iterator | None = None

    def set_error_policy(self, on_error: str, max_error_fraction: float = 0.01) -> None:
        """What a bad sample does (the `data` section's `on_error`); before the first batch."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not 0.0 <= max_error_fraction <= 1.0:
            raise ValueError(f"max_error_fraction must be in [0, 1], got {max_error_fraction}")
        self.on_error, self.max_error_fraction = on_error, max_error_fraction
        self._loader, self._it = None, None  # workers made under the old policy are not reused

    def _data_loader(
        self, sampler: ResumableBatchSampler, *, with_valid: bool, persistent: bool
    ) -> DataLoader:
        return DataLoader(
            _SeededSamples(self.source, self.seed, self.on_error),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=BatchAssembler(
                # The batch id in each item already tells micro-batches apart, whatever the rank layout.
                self.port_to_key, self.generators, seed=self.seed, rank=0, with_valid=with_valid
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
        if self._split_error:
            raise ValueError(self._split_error)
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
        skipped = self._bad_data(out)
        self.data_errors += skipped[0] + self._scan_errors
        self._scan_errors = 0
        self.samples_seen += _batch_len(out)
        allowed = self.max_error_fraction * max(self.samples_seen, MIN_ERROR_WINDOW)
        if self.data_errors > allowed:
            raise DataErrorLimit(
                f"{self.data_errors} of {self.samples_seen} samples could not be read, more than "
                f"data.max_error_fraction = {self.max_error_fraction:g} allows; the last: {skipped[1] or '?'}"
            )
        return out

    @staticmethod
    def _bad_data(out: dict[str, Any]) -> tuple[int, str]:
        """Take the bad-data keys out of a batch: raise the error it carries, or give (skipped, message)."""
        if _ERROR_KEY in out:
            raise DataError(out[_ERROR_KEY])
        return out.pop(_SKIPPED_KEY, (0, ""))

    def state_dict(self) -> dict[str, int]:
        """The position as global batches (optimizer steps) consumed in the epoch, `batch`, plus
        `micro`, the micro-batches of the next one already drawn (0 between steps)."""
        step, micro = divmod(self.batch, self.grad_accum)
        return {
            "epoch": self.epoch,
            "batch": step,
            "micro": micro,
            "seed": self.seed,
            "num_samples": len(self.source),
            "global_batch": self.batch_size,
            "world_size": self.world_size,
            "grad_accum": self.grad_accum,
            "data_errors": self.data_errors,
            "samples_seen": self.samples_seen,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a saved position. The position is counted in global batches, so a state
        saved between optimizer steps continues exactly under another world size or accumulation;
        one saved between micro-batches only under the same split. Another seed, dataset size or
        global batch continues at the same number of samples into the epoch, with a warning."""
        epoch, batch, micro = int(state["epoch"]), int(state["batch"]), int(state.get("micro", 0))
        if "global_batch" in state:
            saved_g = int(state["global_batch"])
        else:  # written before the batch was global: `batch` counted per-rank batches of `batch_size`
            saved_g = int(state.get("batch_size", self.batch_size)) * int(state.get("world_size", 1))
        layout = {"seed": state.get("seed", self.seed), "num_samples": state.get("num_samples", len(self.source)),
                  "global_batch": saved_g}
        now = {"seed": self.seed, "num_samples": len(self.source), "global_batch": self.batch_size}
        if layout != now or "global_batch" not in state:
            what = f"saved with {layout} under {now}" if layout != now else "saved before batches were global"
            warnings.warn(
                f"resuming a loader {what}: batches will not match the original run (continuing at the same "
                "number of samples into the epoch)",
                stacklevel=2,
            )
            batch, micro = (batch * saved_g) // self.batch_size, 0
        split = (int(state.get("world_size", self.world_size)), int(state.get("grad_accum", self.grad_accum)))
        if micro and split != (self.world_size, self.grad_accum):
            raise ValueError(
                f"the loader was saved after micro-batch {micro} of a step with {split[0]} rank(s) × {split[1]} "
                f"accumulation step(s); it can continue only with that split, not {self.world_size} × "
                f"{self.grad_accum} (resume from a checkpoint taken between steps)")
        steps = self.sampler.num_steps(eval=False)
        if epoch < 0 or not 0 <= batch <= steps or not 0 <= micro < self.grad_accum:
            raise ValueError(
                f"loader state (epoch {epoch}, batch {batch}, micro {micro}) does not fit {steps} global "
                f"batches of {self.grad_accum} micro-batch(es)"
            )
        self.epoch, self.batch, self._it = epoch, batch * self.grad_accum + micro, None
        self.data_errors = int(state.get("data_errors", 0))  # counts the index's omissions already
        self.samples_seen = int(state.get("samples_seen", 0))
        self._scan_errors = 0

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
        for out in self._data_loader(sampler, with_valid=True, persistent=False):
            self._bad_data(out)  # evaluation replaces bad samples too, but does not count them
            yield out

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
    on_error: str = "raise",
    max_error_fraction: float = 0.01,
    batch_size: int | None = None,
    grad_accum: int = 1,
) -> StatefulLoader:
    """A `StatefulLoader` over `source` for one rank.

    `generators` are `(generator, in_keys, out_keys)` triples run in order on each batch;
    `port_to_key` renames the source's ports to data keys (ports it leaves out are dropped; None
    keeps the port names). `drop_last` and `shuffle` default to the source's own settings.
    `on_error` ("raise" or "skip") and `max_error_fraction`: the bad-data policy (`data` section).
    `batch_size` (default: the source's) is the global batch of all `world_size` ranks, drawn by
    each rank as `grad_accum` micro-batches (see `ResumableBatchSampler`).
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
        on_error=on_error,
        max_error_fraction=max_error_fraction,
        batch_size=batch_size,
        grad_accum=grad_accum,
    )


def _batch_len(batch: Mapping[str, Any]) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 0

"""`Mixture`: one source that draws from several others with given weights.

In a file the parts are other entries of the `data` section, named by `sources`:

    data {
      web:   TextJSONL(path = "web.jsonl", tokenizer = tok)   -> tokens, targets
      code:  TextFiles(root = "src/", tokenizer = tok)         -> tokens, targets
      train: Mixture(sources = ["web", "code"], weights = [0.7, 0.3], batch_size = 16) -> tokens, targets
    }

An entry named by a mixture is a part, not a training or evaluation source of its own. The mixture
writes the keys it is bound to (its ports are named by those keys); every part must write them all
(`l3m lint`, E821). Each part's own batch size, shuffle and split settings stay its own business:
only its samples are used, and the mixture's loader batches and shuffles them.

Which part sample `i` comes from is a pure function of `i`, so the mixture is map-style and
random-access like every source and resumes exactly from the loader's `(epoch, batch)`; nothing
depends on the number of loader workers or ranks. A fixed pattern of `PERIOD` draws assigns the
parts: built greedily so that every prefix holds each part's share to within one draw (weights are
realised to 1/PERIOD), and repeated. The t-th draw from part k reads its sample `t mod len(k)`.
The loader's seeded per-epoch permutation then decides the order, so the samples of a step depend
on `train.seed` exactly as for any other source.

Length of an epoch: by default the shortest mixture in which every sample of every part is drawn at
least once (the part that is largest relative to its weight is read exactly once; the others wrap
around and repeat, keeping the weights). `num_samples` sets the length instead (smaller: the first
draws of each part only, the same ones every epoch; larger: more repeats).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from l3m.data.loader import mix_seed
from l3m.data.sources.base import Source, Spec
from l3m.registry import register

PERIOD = 10_000  # draws in the assignment pattern (weights are realised to 1/PERIOD)


def assignment_pattern(weights: list[float], period: int = PERIOD) -> np.ndarray:
    """`period` part indices: at each draw the part furthest behind its share (ties: the first)."""
    p = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    counts = np.zeros(len(p))
    out = np.empty(period, dtype=np.int32)
    for r in range(period):
        k = int(np.argmax(p * (r + 1) - counts))
        out[r] = k
        counts[k] += 1
    return out


@register("source")
class Mixture(Source):
    """Samples drawn from the `data` entries named by `sources` with the given `weights` (see the
    module docstring: the syntax, the length of an epoch, determinism). `batch_size` is the mixture's
    own (the parts' are not used)."""

    outputs = ("*",)  # the keys it is bound to: the keys every part writes

    def __init__(
        self,
        sources: list[str],
        weights: list[float],
        num_samples: int = 0,
        batch_size: int = 16,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        if not sources:
            raise ValueError("Mixture needs at least one source")
        if len(set(sources)) != len(sources):
            raise ValueError(f"Mixture names a source twice: {sources}")
        if len(weights) != len(sources):
            raise ValueError(f"Mixture has {len(sources)} sources but {len(weights)} weights")
        if any(not w > 0 for w in weights):
            raise ValueError(f"Mixture weights must be positive, got {weights}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be 0 (automatic) or positive, got {num_samples}")
        self.names, self.weights = list(sources), [float(w) for w in weights]
        self.num_samples = num_samples
        self.pattern = assignment_pattern(self.weights)
        per = np.bincount(self.pattern, minlength=len(sources))
        if (per == 0).any():
            tiny = [n for n, c in zip(sources, per) if c == 0]
            raise ValueError(f"Mixture weights of {', '.join(tiny)} are below 1/{PERIOD} of the total")
        self.per_period = per
        # rank[r]: how many earlier draws of the pattern went to the same part as draw r
        self.rank = np.zeros(PERIOD, dtype=np.int64)
        for k in range(len(sources)):
            where = np.flatnonzero(self.pattern == k)
            self.rank[where] = np.arange(len(where))
        self.parts: list[tuple[Any, dict[str, str]]] = []
        self.keys: list[str] = []
        self._len = 0

    # -- wiring (the session hands over the parts) --------------------------------------------------

    def bind(self, parts: list[tuple[Any, Mapping[str, str]]], keys: list[str]) -> Mixture:
        """Attach the built part sources, each with its `{port: key}` map, in `sources` order; `keys`
        are the keys this mixture writes."""
        if len(parts) != len(self.names):
            raise ValueError(f"Mixture has {len(self.names)} sources, {len(parts)} given")
        for name, (src, ports) in zip(self.names, parts):
            missing = [k for k in keys if k not in ports.values()]
            if missing:
                raise ValueError(f"Mixture source '{name}' does not write {', '.join(missing)}")
            if len(src) == 0:
                raise ValueError(f"Mixture source '{name}' has no samples")
        self.parts = [(src, {p: k for p, k in ports.items() if k in keys}) for src, ports in parts]
        self.keys = list(keys)
        self._check_specs()
        self._len = self.num_samples or max(self._first_covering(k, len(s)) for k, (s, _) in enumerate(self.parts))
        return self

    def _check_specs(self) -> None:
        """Samples of different parts are batched together: each key must have one shape and dtype
        (else the collate in a loader worker fails with an error that names no source)."""
        seen: dict[str, tuple[str, Any]] = {}
        for name, (src, ports) in zip(self.names, self.parts):
            try:
                spec = src.spec()
            except Exception:  # noqa: BLE001 - a part that cannot say its shapes is not checked here
                continue
            for port, key in ports.items():
                if port not in spec:
                    continue
                shape, dtype = spec[port]
                got = (tuple(shape), dtype)
                if key in seen and seen[key][1] != got:
                    first, want = seen[key]
                    raise ValueError(
                        f"Mixture sources give '{key}' in different shapes: '{first}' {list(want[0])} {want[1]}, "
                        f"'{name}' {list(got[0])} {got[1]} (the samples are batched together: give every source "
                        "the same seq_len / image_size)")
                seen.setdefault(key, (name, got))

    def _first_covering(self, k: int, n: int) -> int:
        """The shortest length whose draws include `n` draws from part `k`."""
        full, m = divmod(n - 1, int(self.per_period[k]))
        return full * PERIOD + int(np.flatnonzero(self.pattern == k)[m]) + 1

    def _check_bound(self) -> None:
        if not self.parts:
            raise RuntimeError("Mixture has no parts yet: the training session binds the sources it names")

    # -- the dataset -------------------------------------------------------------------------------

    def locate(self, i: int) -> tuple[int, int]:
        """(part, sample index in the part) of mixture sample `i`."""
        block, r = divmod(i, PERIOD)
        k = int(self.pattern[r])
        t = block * int(self.per_period[k]) + int(self.rank[r])
        return k, t % len(self.parts[k][0])

    def __len__(self) -> int:
        self._check_bound()
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        k, j = self.locate(i)
        src, ports = self.parts[k]
        sample = src[j]
        return {key: sample[port] for port, key in ports.items()}

    def spec(self) -> Spec:
        self._check_bound()
        src, ports = self.parts[0]
        spec = src.spec()
        return {key: spec[port] for port, key in ports.items()}

    # -- counts for the logs -------------------------------------------------------------------------

    def counts_in(self, order: torch.Tensor, stops: list[int]) -> np.ndarray:
        """`[len(stops), parts]`: draws from each part among `order[:stop]` for each stop."""
        comp = torch.from_numpy(self.pattern)[order % PERIOD]
        out = np.zeros((len(stops), len(self.parts)), dtype=np.int64)
        for k in range(len(self.parts)):
            c = torch.cat([torch.zeros(1, dtype=torch.long), (comp == k).long().cumsum(0)])
            out[:, k] = c[torch.tensor(stops, dtype=torch.long)].numpy()
        return out


class MixtureCounter:
    """Samples drawn so far from each part of a loader's `Mixture`, all ranks together, from the
    loader's position alone (so the numbers survive a resume): `data/<name>` for the logs."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.src = loader, loader.source
        self._epoch: tuple[int, np.ndarray] | None = None  # (epoch, counts at each global batch)
        self._full: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        n, sampler = len(self.src), self.loader.sampler
        if sampler.shuffle:  # the loader's epoch order (l3m.data.loader)
            return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(sampler.seed, epoch)))
        return torch.arange(n)

    def _layout(self) -> tuple[int, int, int]:
        """(samples per global batch, global batches in an epoch, global batches done in this epoch)."""
        ld, st = self.loader, self.loader.state_dict()
        if "global_batch" in st:  # the batch is global: `batch` counts optimizer steps
            return int(st["global_batch"]), int(ld.sampler.num_steps(eval=False)), int(st["batch"])
        per = int(st["batch_size"]) * int(st["world_size"])
        return per, int(ld.batches_per_epoch), int(st["batch"])

    def _epoch_counts(self, epoch: int, g: int, steps: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            n = len(self.src)
            stops = [min(s * g, n) for s in range(steps + 1)]
            self._epoch = (epoch, self.src.counts_in(self._order(epoch), stops))
        return self._epoch[1]

    def counts(self) -> dict[str, int]:
        g, steps, done = self._layout()
        epoch = int(self.loader.epoch)
        total = np.zeros(len(self.src.parts), dtype=np.int64)
        for e in range(epoch):
            if e not in self._full:
                self._full[e] = self._epoch_counts(e, g, steps)[steps]
            total += self._full[e]
        total += self._epoch_counts(epoch, g, steps)[min(done, steps)]
        return {f"data/{name}": int(c) for name, c in zip(self.src.names, total)}


_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mixture_counts(loader: Any) -> dict[str, int]:
    """`{"data/<source>": samples drawn so far}` when `loader` reads a Mixture, else `{}`."""
    if loader is None or not isinstance(getattr(loader, "source", None), Mixture):
        return {}
    if loader not in _COUNTERS:
        _COUNTERS[loader] = MixtureCounter(loader)
    return _COUNTERS[loader].counts()


def mixture_parts(program: Any, node: Any) -> list[Any]:
    """The `data` nodes a Mixture node names, in its `sources` order (unknown names left out)."""
    by_name = {n.name: n for n in program.of_role("source")}
    return [by_name[s] for s in node.call.kwargs.get("sources", []) if s in by_name]


def part_names(program: Any) -> set[str]:
    """Names of the data entries that some Mixture uses as a part (not sources of their own)."""
    out: set[str] = set()
    for n in program.of_role("source"):
        if n.call.type_name == "Mixture" and isinstance(n.call.kwargs.get("sources"), list):
            out.update(s for s in n.call.kwargs["sources"] if isinstance(s, str))
    return out

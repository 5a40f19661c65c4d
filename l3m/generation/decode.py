"""The decode loops: prompts (token ids) in, new token ids out, per sequence until EOS or the limit.

Two ways to run the model:

- with the key/value cache (`decode_cached`): prompts are left-padded to one length and run once;
  after that each step runs only the newest token of every sequence. `use_cache=False` runs the
  same loop without keeping anything: every step runs the whole sequence again through a fresh
  cache (the reference the cache is tested against, and the benchmark's baseline).
- without it (`decode_full`), for decoders neither cache can serve: prompts are right-padded and the
  whole sequence runs every step, so causal attention never lets a real token see a pad. Decoders
  whose text joins other inputs (AIMv2's, text after the image tokens) are cached by
  `l3m.generation.staged`, which gives `decode_full`'s tokens with the image encoder run once.

Finished sequences (EOS) keep running with the batch (their tokens are ignored) until all finish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from l3m.generation.cache import DecodeState
from l3m.generation.decoder import Decoder
from l3m.generation.hooks import decoding
from l3m.generation.sampling import next_tokens


@dataclass
class Settings:
    """How to choose tokens and when to stop."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    eos_id: int | None = None
    pad_id: int = 0
    use_cache: bool = True


StopFn = Callable[[int, list[int]], bool]  # (sequence, its new ids so far) -> stop it here


@dataclass
class Output:
    """The new ids of each sequence (EOS left out) and whether it stopped at EOS."""

    ids: list[list[int]]
    stopped: list[bool] = field(default_factory=list)
    steps: int = 0  # forward passes run


class _Collector:
    """Appends each step's tokens to the sequences still running; knows when all have stopped.
    `stop(b, ids)`, when given, ends sequence b once it holds for its new ids (a stop string)."""

    def __init__(self, batch: int, eos_id: int | None, stop: StopFn | None = None) -> None:
        self.ids: list[list[int]] = [[] for _ in range(batch)]
        self.done = [False] * batch
        self.eos_id, self.stop = eos_id, stop

    def add(self, tokens: torch.Tensor) -> None:
        for b, t in enumerate(tokens.tolist()):
            if self.done[b]:
                continue
            if t == self.eos_id:
                self.done[b] = True
            else:
                self.ids[b].append(t)
                if self.stop is not None and self.stop(b, self.ids[b]):
                    self.done[b] = True

    @property
    def finished(self) -> bool:
        return all(self.done)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _device(decoder: Decoder) -> torch.device:
    return next(decoder.model.parameters()).device


def _check(prompts: list[list[int]], decoder: Decoder) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    bad = [t for p in prompts for t in p if not 0 <= t < decoder.vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {decoder.vocab}")


@torch.no_grad()
def decode_cached(decoder: Decoder, prompts: list[list[int]], settings: Settings,
                  stop: StopFn | None = None) -> Output:
    """Generate with left-padded prompts through `l3m.generation.hooks` (see the module docstring);
    the model reads nothing but its tokens. `stop(b, new ids)` also ends sequence b (the token that
    made it hold is kept; `Output.stopped` is then True, as at EOS)."""
    _check(prompts, decoder)
    device = _device(decoder)
    model = decoder.model
    longest = max(len(p) for p in prompts)
    if decoder.positions is not None and longest + settings.max_new_tokens - 1 > decoder.positions:
        raise ValueError(f"a {longest}-token prompt and {settings.max_new_tokens} new tokens are longer than the "
                         f"model's {decoder.positions} positions (shorten the prompt or --max-new-tokens)")
    pad = [longest - len(p) for p in prompts]
    seq = torch.tensor([[settings.pad_id] * n + p for n, p in zip(pad, prompts)], dtype=torch.long, device=device)
    capacity = longest + settings.max_new_tokens
    gen, out = _generator(settings.seed, device), _Collector(len(prompts), settings.eos_id, stop)

    def run(state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        state.begin(tokens.shape[1])
        logits = model({decoder.token_key: tokens})[decoder.logits_key]
        state.end()
        return logits[:, -1]

    steps = 0
    if settings.use_cache:
        state = DecodeState(pad, capacity, device)
        with decoding(model, state):
            logits = run(state, seq)
            steps += 1
            for i in range(settings.max_new_tokens):
                new = next_tokens(logits, settings.temperature, settings.top_p, gen)
                out.add(new)
                if out.finished or i == settings.max_new_tokens - 1:
                    break
                logits = run(state, new[:, None])
                steps += 1
    else:
        for _ in range(settings.max_new_tokens):
            state = DecodeState(pad, seq.shape[1], device)
            with decoding(model, state):
                logits = run(state, seq)
            steps += 1
            new = next_tokens(logits, settings.temperature, settings.top_p, gen)
            out.add(new)
            if out.finished:
                break
            seq = torch.cat([seq, new[:, None]], dim=1)
    return Output(out.ids, list(out.done), steps)


@torch.no_grad()
def decode_full(decoder: Decoder, prompts: list[list[int]], settings: Settings,
                inputs: Mapping[str, torch.Tensor] | None = None, length: int | None = None,
                aligned: bool = False) -> Output:
    """Generate by running the whole right-padded sequence every step. `length`: a model that takes
    a fixed number of tokens (AIMv2's `text_len`) gets exactly that many; `aligned`: logits at i
    predict token i (AIMv2's, after its cls token), not token i + 1."""
    _check(prompts, decoder)
    device = _device(decoder)
    model, inputs = decoder.model, dict(inputs or {})
    lengths = [len(p) for p in prompts]
    room = max(lengths) + settings.max_new_tokens if length is None else length
    if max(lengths) >= room:
        raise ValueError(f"the prompt is {max(lengths)} tokens; the model takes {room} in all")
    seq = torch.full((len(prompts), room), settings.pad_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        seq[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    gen, out = _generator(settings.seed, device), _Collector(len(prompts), settings.eos_id)
    rows = torch.arange(len(prompts), device=device)
    steps = 0
    for _ in range(min(settings.max_new_tokens, room - max(lengths))):
        width = room if length is not None else max(lengths)
        logits = model({**inputs, decoder.token_key: seq[:, :width]})[decoder.logits_key]
        steps += 1
        at = torch.tensor(lengths, device=device) - (0 if aligned else 1)
        new = next_tokens(logits[rows, at], settings.temperature, settings.top_p, gen)
        out.add(new)
        if out.finished:
            break
        for b, t in enumerate(new.tolist()):
            if not out.done[b]:
                seq[b, lengths[b]] = t
                lengths[b] += 1
    return Output(out.ids, list(out.done), steps)

"""Key/value-cached decoding for decoders whose text joins other inputs (AIMv2's captions: image
features, a cls token, then the text, through one causal Transformer).

The model's schedule is split by what reads the text. Blocks that lead to the logits without
reading it (the image encoder, the projection of its features) run once; their outputs are kept.
The blocks that read it run per chunk: first the whole right-padded prompt, then one new token per
sequence per step. Each text-dependent key carries, beside its tensor, the position of every chunk
token in that key's own sequence (`Chunk.pos`); the blocks that change token positions are run by
rules that say what they do to a chunk:

- token-wise blocks (embeddings, heads, linear layers, norms; `decoder.TOKENWISE`) run as they are;
- `ClsToken` prepends its tokens on the prompt chunk and shifts positions on later ones;
- `PosEmbed` adds the rows of the chunk's own positions;
- `Concat` along the tokens puts the run-once prefix before the prompt chunk, then shifts positions;
- `SelectTokens` keeps the window `start:end` (a new token must fall inside it);
- a causal self-attention `Transformer` keeps each layer's keys/values at their positions
  (`SlotCache`), so the prefix is computed once and a new token attends to everything before it.

Prompts are right-padded, as `decode_full` pads them: a sequence's next token overwrites the pad at
its own position, and causal attention never shows a query a key past itself, so pads are never
seen. Any other block on the text's way makes the plan refuse (`StagedPlanError`), and generate falls
back to recomputing the whole sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from l3m.generation.decode import Output, Settings, _check, _Collector, _device, _generator
from l3m.generation.decoder import TOKENWISE, Decoder, _trunk_problem
from l3m.generation.hooks import PlacedRotary, installed
from l3m.generation.sampling import next_tokens
from l3m.model.blocks.embeddings import ClsToken, PosEmbed, RotaryEmbedding
from l3m.model.blocks.layers import Concat
from l3m.model.blocks.pooling import SelectTokens
from l3m.model.blocks.transformer import CrossAttentionDecoder, Transformer
from l3m.model.core import Binding


class StagedPlanError(ValueError):
    """A block on the text's way that a chunk cannot run through (the reason is the message)."""


@dataclass
class Chunk:
    """A text-dependent key during one chunk: its tensor `[B, n, ...]`, the positions `[B, n]` of
    the chunk's tokens in the key's sequence, and `shift`, where text token 0 sits in it."""

    x: torch.Tensor
    pos: torch.Tensor
    shift: int


class SlotState:
    """The positions of the chunk now running through one Transformer (what its caches and its
    rotary tables read); `capacity`: the positions its caches hold."""

    def __init__(self) -> None:
        self.pos: torch.Tensor | None = None
        self.capacity = 0

    def positions(self) -> torch.Tensor:
        assert self.pos is not None
        return self.pos


class SlotCache:
    """One causal self-attention's keys/values, stored at each token's own position (the
    `Attention.kv_cache` interface of `l3m.generation.cache.LayerCache`)."""

    def __init__(self, state: SlotState) -> None:
        self.state = state
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        if mask is not None or not is_causal:
            raise ValueError("a key/value cache needs causal self-attention without a mask of its own")
        pos = self.state.positions()
        if self.k is None or self.v is None:
            shape = (k.shape[0], self.state.capacity, *k.shape[2:])
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[rows, pos] = k
        self.v[rows, pos] = v
        stop = int(pos.max()) + 1
        keys = torch.arange(stop, device=k.device)
        mask = (keys[None, None, :] <= pos[:, :, None])[:, None]  # [B, 1, n, stop]: causal by position
        return self.k[:, :stop], self.v[:, :stop], mask, False


@dataclass
class StagedPlan:
    """The blocks that run once (`once`) and those that run per chunk (`per_chunk`), in schedule
    order, each with its binding; blocks the logits do not need are left out."""

    decoder: Decoder
    once: list[tuple[str, Binding]]
    per_chunk: list[tuple[str, Binding]]


def plan_staged(decoder: Decoder) -> StagedPlan:
    """Split `decoder.model`'s schedule for cached decoding; StagedPlanError when a block on the
    text's way has no chunk rule."""
    model = decoder.model
    bindings = dict(model._bindings)
    needed, kept = {decoder.logits_key}, []
    for path in reversed(model.schedule):
        b = bindings[path]
        if needed & set(b.write_keys):
            kept.append(path)
            needed = (needed - set(b.write_keys)) | set(b.read_keys)
    text, once, per_chunk = {decoder.token_key}, [], []
    for path in reversed(kept):
        b = bindings[path]
        if text & set(b.read_keys):
            _check_rule(path, model.get_submodule(path), b, text)
            per_chunk.append((path, b))
            text |= set(b.write_keys)
        else:
            once.append((path, b))
            text -= set(b.write_keys)
    used = {k for _, b in per_chunk for k in b.read_keys} | {decoder.logits_key}
    for path, b in per_chunk:
        extra = [k for k in b.writes[1:] if k is not None and k in used]
        if extra:
            raise StagedPlanError(f"{path}: its output {extra[0]!r} is read on the text's way")
    return StagedPlan(decoder, once, per_chunk)


def _check_rule(path: str, block: nn.Module, b: Binding, text: set[str]) -> None:
    kind = type(block).__name__
    streams = [k for k in b.read_keys if k in text]
    if isinstance(block, Concat):
        if block.axis != 1 or b.read_keys[-1] not in text or len(streams) != 1:
            raise StagedPlanError(f"{path} (Concat): only a run-once prefix before the text along the tokens "
                                  "(axis 1) can be cached")
        return
    if len(b.read_keys) != 1:
        raise StagedPlanError(f"{path} ({kind}) reads more than the text (a mask or a context)")
    if isinstance(block, Transformer) and not isinstance(block, CrossAttentionDecoder):
        problem = _trunk_problem(block, 1)
        if problem:
            raise StagedPlanError(f"{path} ({kind}): {problem}")
    elif isinstance(block, PosEmbed):
        if block.cp is not None:
            raise StagedPlanError(f"{path} (PosEmbed) runs under context parallelism")
    elif isinstance(block, SelectTokens):
        if block.start < 0 or (block.end is not None and block.end < block.start):
            raise StagedPlanError(f"{path} (SelectTokens) counts from the end of the sequence")
    elif not isinstance(block, ClsToken) and kind not in TOKENWISE:
        raise StagedPlanError(f"{path} ({kind}) is not a block the cache knows to run token by token")


class StagedRunner:
    """Runs a plan: `prepare` the run-once blocks, then `chunk` the text through the rest; the
    caches hold the prompt chunk and `extra` more tokens."""

    def __init__(self, plan: StagedPlan, extra: int = 0) -> None:
        self.plan, self.model = plan, plan.decoder.model
        self.states: dict[str, SlotState] = {p: SlotState() for p, _ in plan.per_chunk
                                             if isinstance(self.model.get_submodule(p), Transformer)}
        self.kept: dict[str, Any] = {}
        self.extra = extra

    def prepare(self, inputs: Mapping[str, Any]) -> None:
        """Run the blocks that do not read the text, once."""
        d = dict(inputs)
        for path, b in self.plan.once:
            for key, value in zip(b.writes, b.call(self.model.get_submodule(path), d)):
                if key is not None:
                    d[key] = value
        self.kept = d

    @contextlib.contextmanager
    def caching(self) -> Iterator[None]:
        """Each causal self-attention of the per-chunk Transformers keeps its keys/values; their
        rotary tables read the chunk's positions."""
        with contextlib.ExitStack() as stack:
            for path, state in self.states.items():
                stack.enter_context(installed(self.model.get_submodule(path), state, SlotCache,
                                              {RotaryEmbedding: PlacedRotary}))
            yield

    def chunk(self, tokens: torch.Tensor, pos: torch.Tensor, first: bool) -> Chunk:
        """The logits chunk for text `tokens` `[B, n]` at text positions `pos` `[B, n]`; `first`:
        the prompt chunk (positions 0..n-1), which also runs the prefixes."""
        streams = {self.plan.decoder.token_key: Chunk(tokens, pos, 0)}
        for path, b in self.plan.per_chunk:
            block = self.model.get_submodule(path)
            out = self._run(path, block, b, streams, first)
            streams[b.writes[0] or ""] = out
        return streams[self.plan.decoder.logits_key]

    def _run(self, path: str, block: nn.Module, b: Binding, streams: dict[str, Chunk], first: bool) -> Chunk:
        if isinstance(block, Concat):
            c = streams[b.read_keys[-1]]
            prefix = [self.kept[k] for k in b.read_keys[:-1]]
            k = sum(int(p.shape[1]) for p in prefix)
            x = torch.cat([*prefix, c.x], dim=1) if first else c.x
            return Chunk(x, _prepend(c.pos, k, first), c.shift + k)
        c = streams[b.read_keys[0]]
        if isinstance(block, ClsToken):
            k = 1 + (block.registers.shape[1] if block.registers is not None else 0)
            return Chunk(block(c.x) if first else c.x, _prepend(c.pos, k, first), c.shift + k)
        if isinstance(block, PosEmbed):
            idx = c.pos - block.offset
            if int(idx.max()) >= block.num:
                raise ValueError(f"the sequence is longer than the model's {block.num} positions at {path} "
                                 "(shorten the prompt or --max-new-tokens)")
            rows = block.pos[0][idx.clamp(min=0)].to(c.x.dtype) * (idx >= 0)[..., None].to(c.x.dtype)
            return Chunk(c.x + rows, c.pos, c.shift)
        if isinstance(block, SelectTokens):
            start, end = block.start, block.end
            if first:
                return Chunk(c.x[:, start:end], c.pos[:, start:end] - start, c.shift - start)
            if int(c.pos.min()) < start or (end is not None and int(c.pos.max()) >= end):
                raise ValueError(f"{path} (SelectTokens {start}:{end}) leaves out the new token: the text is "
                                 "longer than the decoder reads")
            return Chunk(c.x, c.pos - start, c.shift - start)
        if path in self.states:
            state = self.states[path]
            if first:
                state.capacity = int(c.pos.max()) + 1 + self.extra
            state.pos = c.pos
            x = b.call(block, {b.read_keys[0]: c.x})[0]
            return Chunk(x, c.pos, c.shift)
        return Chunk(b.call(block, {b.read_keys[0]: c.x})[0], c.pos, c.shift)  # token-wise


def _prepend(pos: torch.Tensor, k: int, first: bool) -> torch.Tensor:
    """Positions after k tokens are put before the sequence (on the prompt chunk, those k too)."""
    if not first:
        return pos + k
    head = torch.arange(k, device=pos.device).expand(pos.shape[0], k)
    return torch.cat([head, pos + k], dim=1)


@torch.no_grad()
def decode_staged(plan: StagedPlan, prompts: list[list[int]], settings: Settings,
                  inputs: Mapping[str, torch.Tensor] | None = None, length: int | None = None,
                  aligned: bool = False) -> Output:
    """`decode_full`'s tokens (same arguments, same padding, same draws) with the run-once blocks
    run once and the text through the key/value cache. The next token is read at the newest token's
    output, so `aligned` (AIMv2: logits at i predict token i) must match where the text sits there."""
    decoder = plan.decoder
    _check(prompts, decoder)
    device = _device(decoder)
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    room = longest + settings.max_new_tokens if length is None else length
    if longest >= room:
        raise ValueError(f"the prompt is {longest} tokens; the model takes {room} in all")
    steps_max = min(settings.max_new_tokens, room - longest)
    seq = torch.full((len(prompts), longest), settings.pad_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        seq[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    gen, out = _generator(settings.seed, device), _Collector(len(prompts), settings.eos_id)
    runner = StagedRunner(plan, extra=steps_max)
    runner.prepare(dict(inputs or {}))
    rows = torch.arange(len(prompts), device=device)
    steps = 0
    with runner.caching():
        pos = torch.arange(longest, device=device).expand(len(prompts), longest)
        logits_chunk = runner.chunk(seq, pos, first=True)
        steps += 1
        if logits_chunk.shift != (1 if aligned else 0):
            raise ValueError("the newest token's output does not predict the next token here (its logits are "
                             f"{logits_chunk.shift} positions after its text): decode it without the cache")
        last = torch.tensor(lengths, device=device) - 1 + logits_chunk.shift
        logits = logits_chunk.x[rows, last - logits_chunk.pos[:, 0]]
        for i in range(steps_max):
            new = next_tokens(logits, settings.temperature, settings.top_p, gen)
            out.add(new)
            if out.finished or i == steps_max - 1:
                break
            done = torch.tensor(out.done, device=device)
            at = torch.tensor(lengths, device=device)
            feed = torch.where(done, torch.full_like(new, settings.pad_id), new)
            step = runner.chunk(feed[:, None], at[:, None], first=False).x[:, -1]
            steps += 1
            logits = torch.where(done[:, None], logits, step)  # a finished sequence's logits stay as they were
            for b in range(len(prompts)):
                if not out.done[b]:
                    lengths[b] += 1
    return Output(out.ids, list(out.done), steps)


def staged_plan(decoder: Decoder) -> StagedPlan | None:
    """The plan of `decoder`, or None when a block on the text's way has no chunk rule."""
    try:
        return plan_staged(decoder)
    except StagedPlanError:
        return None

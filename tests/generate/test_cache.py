"""The key/value cache gives what recomputing the whole sequence gives: the same logits, the same
greedy tokens, the same samples; left-padded batches give what each prompt gives alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from gen_models import build

from l3m.generation.cache import DecodeState
from l3m.generation.decode import Settings, decode_cached, decode_full
from l3m.generation.decoder import find_decoder
from l3m.generation.hooks import decoding

PROMPTS = [[72, 101, 108, 108, 111], [100, 101, 102], [35, 32, 97, 98]]


@pytest.fixture(scope="module", params=["llm", "llama", "llama_unfused"])
def decoder(request):
    return find_decoder(build(request.param))


def test_the_cache_serves_the_text_decoders(decoder):
    assert decoder.cached, decoder.cache_problem
    assert (decoder.token_key, decoder.logits_key, decoder.vocab) == ("tokens", "logits", 256)


@torch.no_grad()
def test_cached_logits_match_a_plain_forward(decoder):
    """Prompt, then two tokens one at a time through the cache (a left-padded batch) against the
    model run on each whole unpadded sequence with no hooks."""
    model = decoder.model
    extra = [[11, 12], [13, 14], [15, 16]]
    longest = max(map(len, PROMPTS))
    pad = [longest - len(p) for p in PROMPTS]
    state = DecodeState(pad, longest + 2)
    seq = torch.tensor([[0] * n + p for n, p in zip(pad, PROMPTS)])
    with decoding(model, state):
        state.begin(longest)
        model({"tokens": seq})
        state.end()
        for j in range(2):
            state.begin(1)
            last = model({"tokens": torch.tensor([[e[j]] for e in extra])})["logits"][:, -1]
            state.end()
    for b, p in enumerate(PROMPTS):
        plain = model({"tokens": torch.tensor([p + extra[b]])})["logits"][0, -1]
        torch.testing.assert_close(last[b], plain, atol=1e-5, rtol=1e-5)
    assert all(a.kv_cache is None for a in model.modules() if hasattr(a, "kv_cache"))  # taken off again


def test_greedy_tokens_agree_cached_uncached_full_and_alone(decoder):
    s = Settings(max_new_tokens=8)
    cached = decode_cached(decoder, PROMPTS, s)
    uncached = decode_cached(decoder, PROMPTS, Settings(max_new_tokens=8, use_cache=False))
    full = decode_full(decoder, PROMPTS, s)
    alone = [decode_cached(decoder, [p], s).ids[0] for p in PROMPTS]
    assert cached.ids == uncached.ids == full.ids == alone
    assert all(len(i) == 8 for i in cached.ids)
    assert cached.steps == 8 and uncached.steps == 8  # one prompt pass + 7 single tokens; 8 whole passes


def test_sampling_is_reproducible_and_the_same_with_or_without_cache(decoder):
    s = Settings(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    first = decode_cached(decoder, PROMPTS, s).ids
    assert decode_cached(decoder, PROMPTS, s).ids == first
    assert decode_cached(decoder, PROMPTS, Settings(**{**s.__dict__, "use_cache": False})).ids == first
    assert decode_cached(decoder, PROMPTS, Settings(**{**s.__dict__, "seed": 8})).ids != first


def test_each_sequence_stops_at_its_eos(decoder):
    greedy = decode_cached(decoder, PROMPTS, Settings(max_new_tokens=6)).ids
    eos = greedy[0][0]  # the first sequence stops at once; the others only if they reach it
    out = decode_cached(decoder, PROMPTS, Settings(max_new_tokens=6, eos_id=eos))
    assert out.ids[0] == [] and out.stopped[0]
    for b in (1, 2):
        cut = greedy[b].index(eos) if eos in greedy[b] else len(greedy[b])
        assert out.ids[b] == greedy[b][:cut]
        assert out.stopped[b] == (eos in greedy[b])


def test_positions_past_the_table_are_refused():
    dec = find_decoder(build("llm"))  # absolute positions: context 64
    assert dec.positions == 64
    assert len(decode_cached(dec, [[1] * 60], Settings(max_new_tokens=5)).ids[0]) == 5  # the 5th is never fed
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        decode_cached(dec, [[1] * 60], Settings(max_new_tokens=6))
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):  # the table itself refuses
        decode_cached(replace(dec, positions=None), [[1] * 60], Settings(max_new_tokens=6))

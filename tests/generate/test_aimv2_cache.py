"""AIMv2's caption decoder with the key/value cache (`l3m.generation.staged`): the image encoder runs
once, the text through the cache; the tokens, logits and samples are those of recomputing the whole
sequence every step (`decode_full`)."""

from __future__ import annotations

import pytest
import torch
from gen_models import build

from l3m.generation.decode import Settings, decode_cached, decode_full
from l3m.generation.decoder import find_decoder
from l3m.generation.staged import StagedPlanError, StagedRunner, decode_staged, plan_staged

TEXT_LEN = 16  # examples/aimv2_digits.l3m's caption length
PROMPTS = [[1, 5, 7, 9, 11, 13, 15, 17], [1, 3], [1, 20, 21]]


@pytest.fixture(scope="module")
def plan():
    return plan_staged(find_decoder(build("aimv2")))


def images(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 3, 16, 16, generator=g), "prefix_len": torch.full((batch,), 1 << 30)}


def both(plan, prompts, settings, inputs):
    full = decode_full(plan.decoder, prompts, settings, inputs, length=TEXT_LEN, aligned=True)
    staged = decode_staged(plan, prompts, settings, inputs, length=TEXT_LEN, aligned=True)
    return full, staged


def test_the_encoder_runs_once_and_the_text_per_chunk(plan):
    once = [p.rsplit(".", 1)[-1] for p, _ in plan.once]
    per_chunk = [p.rsplit(".", 1)[-1] for p, _ in plan.per_chunk]
    assert once == ["patches", "pos", "mask", "blocks", "proj"]
    assert per_chunk == ["embed", "cls", "pos", "join", "blocks", "text_part", "lm"]  # not the pixel head


@torch.no_grad()
def test_cached_logits_match_the_whole_sequence(plan):
    """The prompt chunk, then three tokens one at a time, against the model on the whole caption."""
    model, inputs = plan.decoder.model, images(3)
    runner = StagedRunner(plan, extra=3)
    runner.prepare(inputs)
    longest = max(map(len, PROMPTS))
    seq = torch.zeros(3, TEXT_LEN, dtype=torch.long)
    for b, p in enumerate(PROMPTS):
        seq[b, : len(p)] = torch.tensor(p)
    new = torch.randint(2, 300, (3, 3), generator=torch.Generator().manual_seed(0))  # three steps' tokens
    at = torch.tensor([len(p) for p in PROMPTS])
    wants = []  # the whole caption's logits (position i predicts token i), taken before the cache is on
    for j in range(4):
        wants.append(model({**inputs, "text": seq.clone()})["text_logits"])
        if j < 3:
            seq[torch.arange(3), at + j] = new[:, j]
    with runner.caching():
        pos = torch.arange(longest).expand(3, longest)
        chunk = runner.chunk(seq[:, :longest], pos, first=True)
        for b, p in enumerate(PROMPTS):
            torch.testing.assert_close(chunk.x[b, : len(p) + 1], wants[0][b, : len(p) + 1], atol=1e-5, rtol=1e-5)
        for j in range(3):
            step = runner.chunk(new[:, j, None], (at + j)[:, None], first=False).x[:, -1]
            want = wants[j + 1][torch.arange(3), at + j + 1]
            torch.testing.assert_close(step, want, atol=1e-5, rtol=1e-5)
    assert all(getattr(m, "kv_cache", None) is None for m in model.modules())  # taken off again


def test_greedy_captions_are_the_same_batched_and_alone(plan):
    inputs = images(3)
    full, staged = both(plan, PROMPTS, Settings(max_new_tokens=20), inputs)
    assert staged.ids == full.ids and staged.steps == full.steps
    assert all(len(i) == TEXT_LEN - 8 for i in staged.ids)  # until the longest prompt fills the caption
    for b, p in enumerate(PROMPTS):
        one = {k: v[b : b + 1] for k, v in inputs.items()}
        alone = decode_staged(plan, [p], Settings(max_new_tokens=12), one, length=TEXT_LEN, aligned=True).ids[0]
        assert alone[: len(staged.ids[b])] == staged.ids[b]  # alone, a shorter prompt runs on further


def test_seeded_samples_and_eos_are_the_same_with_and_without_cache(plan):
    inputs = images(3, seed=2)
    sampled = Settings(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4)
    full, staged = both(plan, PROMPTS, sampled, inputs)
    assert staged.ids == full.ids
    greedy = decode_staged(plan, PROMPTS, Settings(max_new_tokens=8), inputs, length=TEXT_LEN, aligned=True).ids
    eos = greedy[1][2]  # the second caption stops at its third token (or earlier); the others when they reach it
    full, staged = both(plan, PROMPTS, Settings(max_new_tokens=8, eos_id=eos), inputs)
    assert (staged.ids, staged.stopped) == (full.ids, full.stopped)
    assert staged.ids[1] == greedy[1][: greedy[1].index(eos)] and staged.stopped[1]


def test_a_block_without_a_chunk_rule_is_refused():
    dec = find_decoder(build("aimv2"))
    mask_reader = plan_staged(dec).per_chunk[-1][1]
    assert mask_reader.read_keys == ("aimv2.decoder.t",)
    dec.model.aimv2.decoder.preprocessor.cls = torch.nn.Identity()  # a block the cache knows nothing of
    with pytest.raises(StagedPlanError, match="Identity"):
        plan_staged(dec)


def test_generate_captions_through_the_cache(tmp_path):
    """`l3m generate --image` takes the cached path, and `--no-cache` gives the same captions."""
    import numpy as np
    from gen_models import MODELS, save_weights
    from helpers import ROOT
    from PIL import Image

    from l3m.generation.api import run
    from l3m.generation.loading import load

    save_weights(build("aimv2"), tmp_path / "aimv2.safetensors")
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype("uint8")).save(tmp_path / "d.png")
    loaded = load(tmp_path / "aimv2.safetensors", ROOT / MODELS["aimv2"][0])
    prompts = ["a photo of", "the"]
    cached = run(loaded, prompts, Settings(max_new_tokens=6), tmp_path / "d.png")
    plain = run(loaded, prompts, Settings(max_new_tokens=6, use_cache=False), tmp_path / "d.png")
    assert cached.cached and not plain.cached
    assert cached.ids == plain.ids


@pytest.mark.parametrize("name", ["llm", "llama"])
def test_text_only_decoders_take_the_same_path(name):
    """Nothing runs once for a plain LLM; the staged cache (RoPE or a position table) gives the
    tokens of the left-padded cache and of the whole sequence."""
    dec = find_decoder(build(name))
    plan = plan_staged(dec)
    assert plan.once == []
    prompts = [[72, 101, 108, 108, 111], [100, 101, 102], [35, 32, 97, 98]]
    s = Settings(max_new_tokens=6)
    assert decode_staged(plan, prompts, s).ids == decode_full(dec, prompts, s).ids == decode_cached(dec, prompts, s).ids

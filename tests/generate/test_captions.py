"""AIMv2's multimodal decoder captions an image: its text follows the image tokens, so the plain KV cache
does not serve it (`Decoder.cached` is False); it decodes right-padded at its fixed caption length, through
the staged cache (l3m.generation.staged, tests in test_aimv2_cache.py) or, with --no-cache, in full."""

from __future__ import annotations

import pytest
from gen_models import MODELS, build, save_weights
from helpers import ROOT

import l3m
from l3m.cli import main
from l3m.generation.api import run
from l3m.generation.decode import Settings
from l3m.generation.decoder import find_decoder
from l3m.generation.loading import GenerateError, load


@pytest.fixture(scope="module")
def aimv2(tmp_path_factory):
    """(weights file, program, an 8x8 greyscale PNG) of a random tiny AIMv2."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("aimv2")
    save_weights(build("aimv2"), d / "aimv2.safetensors")
    pixels = (np.random.default_rng(0).random((8, 8)) * 255).astype("uint8")
    Image.fromarray(pixels).save(d / "digit.png")
    return d / "aimv2.safetensors", ROOT / MODELS["aimv2"][0], d / "digit.png"


def test_the_caption_decoder_is_found_but_not_cached():
    dec = find_decoder(build("aimv2"))
    assert (dec.token_key, dec.logits_key) == ("text", "text_logits")
    assert not dec.cached and "PatchEmbed" in dec.cache_problem


def test_a_batch_of_captions_matches_each_alone(aimv2):
    weights, program, image = aimv2
    loaded = load(weights, program)
    prompts = ["a photo of", "the", "a handwritten"]
    batch = run(loaded, prompts, Settings(max_new_tokens=8), image)
    assert batch.ids == [run(loaded, [p], Settings(max_new_tokens=8), image).ids[0] for p in prompts]
    sampled = Settings(max_new_tokens=8, temperature=1.0, seed=5)
    assert run(loaded, prompts, sampled, image).ids == run(loaded, prompts, sampled, image).ids
    assert l3m.generate(weights, prompts, file=program, image=image, max_new_tokens=8) == batch.texts


def test_captions_stop_at_the_caption_length(aimv2):
    weights, program, image = aimv2
    out = run(load(weights, program), ["a"], Settings(max_new_tokens=100), image)
    assert len(out.ids[0]) <= 16 - 2  # <bos> and "a" take 2 of the 16 caption tokens


def test_the_command_line_captions_an_image(aimv2, capsys):
    weights, program, image = aimv2
    assert main(["generate", str(weights), "--file", str(program), "--image", str(image), "--prompt", "the"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(["generate", str(weights), "--file", str(program), "--prompt", "the"]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["generate", str(weights), "--file", str(program), "--image", str(program), "--prompt", "x"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_no_image_is_an_error(aimv2):
    weights, program, _ = aimv2
    with pytest.raises(GenerateError, match="--image"):
        l3m.generate(weights, "the", file=program)

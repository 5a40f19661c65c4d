"""`l3m.generate(...)`: text from a trained run, for Python callers and for `l3m generate`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from l3m.generation.decode import Output, Settings, decode_cached, decode_full
from l3m.generation.loading import GenerateError, Loaded, load
from l3m.generation.sampling import check_sampling
from l3m.generation.staged import decode_staged, staged_plan


@dataclass
class Generated:
    """Each prompt's continuation (text and ids) and whether it ended at EOS."""

    texts: list[str]
    ids: list[list[int]]
    stopped: list[bool]
    cached: bool  # the key/value cache was used


def generate(
    source: str | Path,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    image: str | Path | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> list[str]:
    """The continuations of `prompts` (one string or several, batched) by the model of `source` (a run
    directory, a checkpoint, or a weights file with `file`, its program), tokenized as the run's data
    was. Temperature 0 is greedy; otherwise nucleus sampling over `top_p`, reproducible by `seed`.
    `image` conditions a captioning decoder (AIMv2); `device` defaults to CUDA when there is one.
    Raises `GenerateError` for unusable input."""
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    settings = Settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                        use_cache=use_cache)
    check_request(batch, settings)
    return run(load(source, file, list(overrides), device), batch, settings, image).texts


def check_request(prompts: list[str], settings: Settings) -> None:
    """GenerateError for prompts or settings that cannot generate (checked before any loading)."""
    try:
        check_sampling(settings.temperature, settings.top_p)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    if settings.max_new_tokens < 1:
        raise GenerateError(f"--max-new-tokens must be at least 1, got {settings.max_new_tokens}")
    if not prompts or any(not p for p in prompts):
        raise GenerateError("empty prompt: give each --prompt some text")


def run(loaded: Loaded, prompts: list[str], settings: Settings, image: str | Path | None = None) -> Generated:
    """Generate for `prompts` with a loaded model (see `generate`)."""
    check_request(prompts, settings)
    text, decoder = loaded.text, loaded.decoder
    ids = [text.encode(p) for p in prompts]
    if any(not i for i in ids):
        raise GenerateError("a prompt encodes to no tokens (its text cleaning removed everything)")
    settings = replace(settings, eos_id=text.eos_id, pad_id=text.pad_id)
    inputs = extra_inputs(loaded, len(prompts), image)
    out: Output
    if decoder.cached and not inputs and text.length is None:
        out = decode_cached(decoder, ids, settings)
        cached = settings.use_cache
    elif settings.use_cache and (plan := staged_plan(decoder)) is not None:
        out = decode_staged(plan, ids, settings, inputs, length=text.length, aligned=loaded.aligned)
        cached = True
    else:
        out = decode_full(decoder, ids, settings, inputs, length=text.length, aligned=loaded.aligned)
        cached = False
    return Generated([text.decode(i) for i in out.ids], out.ids, out.stopped, cached)


def extra_inputs(loaded: Loaded, batch: int, image: str | Path | None) -> dict[str, torch.Tensor]:
    """What the model reads besides its tokens: an image (and a prefix covering all of it)."""
    model, decoder = loaded.decoder.model, loaded.decoder
    needed = [k for k in model.input_keys if k != decoder.token_key]
    inputs: dict[str, torch.Tensor] = {}
    for key in needed:
        if key == "image":
            if image is None:
                raise GenerateError("this model captions an image: give one with --image PATH")
            inputs[key] = read_image(image, loaded.source).expand(batch, -1, -1, -1)
        elif key == "prefix_len":  # the whole image is the prefix: bidirectional, as at inference
            inputs[key] = torch.full((batch,), 1 << 30, dtype=torch.long)
        else:
            raise GenerateError(f"the model also reads '{key}', which generate cannot supply")
    if image is not None and "image" not in inputs:
        raise GenerateError("--image: this model reads no image")
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in inputs.items()}


def read_image(path: str | Path, source: dict) -> torch.Tensor:
    """`[1, 3, S, S]` of the image at `path`, sized and scaled as the run's data source makes them."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor, resize

    try:
        with Image.open(path) as im:
            x = pil_to_tensor(im.convert("RGB")).float() / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise GenerateError(f"--image: cannot read {path}: {e}") from None
    size = source.get("image_size", 224)
    x = resize(x, [int(size), int(size)], antialias=True)
    mean, std = source.get("mean"), source.get("std")
    if mean is not None and std is not None:
        x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    elif source.get("normalize", True):  # the digits sources: [0, 1] -> [-1, 1]
        x = x * 2.0 - 1.0
    return x[None]

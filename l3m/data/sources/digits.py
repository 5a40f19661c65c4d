"""scikit-learn's handwritten digits as images and as image-caption pairs (no download)."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import torch
import torch.nn.functional as F

from l3m.data import embedded
from l3m.data.sources.base import Source, Spec, check_split
from l3m.data.sources.captions import caption_encoder, encode_many
from l3m.registry import register

_DIGIT_TEMPLATES = ("a photo of the digit {}", "a handwritten {}", "the number {}")


@register("source")
class DigitsImages(Source):
    """The 8x8 digits, upsampled (bilinear) to `image_size`, greyscale repeated to 3 channels.

    `normalize` maps [0, 1] to [-1, 1]. The split is a seeded permutation cut at
    `train_fraction` (the same for every source built with the same seed).
    """

    outputs = ("image", "label")
    shapes = "-> image: float[B, 3, image_size, image_size], label: long[B] < 10"

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        image_size: int = 16,
        batch_size: int = 32,
        train_fraction: float = 0.8,
        seed: int = 0,
        normalize: bool = True,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        check_split(split)
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.split, self.image_size, self.train_fraction = split, image_size, train_fraction
        self.seed, self.normalize = seed, normalize
        embedded.digits_split(split, train_fraction, seed)  # validate arguments now, not at the first batch

    @cached_property
    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = embedded.digits()
        idx = embedded.digits_split(self.split, self.train_fraction, self.seed, n=len(labels))
        x = images[idx].unsqueeze(1)  # [n, 1, 8, 8]
        if self.image_size != x.shape[-1]:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        x = x.expand(-1, 3, -1, -1).contiguous()
        if self.normalize:
            x = x * 2.0 - 1.0
        return x, labels[idx]

    def __len__(self) -> int:
        return len(self._data[1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self._data
        return {"image": x[i], "label": y[i]}

    def spec(self) -> Spec:
        s = self.image_size
        return {"image": ((3, s, s), torch.float32), "label": ((), torch.long)}


@register("source")
class DigitsImageText(DigitsImages):
    """Digits with captions ("a photo of the digit seven"), for CLIP-style and captioning models.

    `text` is a caption encoded by `tokenizer` with the caption policy (`l3m.data.sources.captions`):
    by default l3m's bytes (BOS=1, EOS=2, PAD=0, bytes shifted by 3; vocabulary 259), or e.g. the
    shipped `"digits_bpe"`. Each sample's template is drawn once from `templates` with `seed`.
    Every caption must fit in `seq_len` (checked here, so nothing is silently cut);
    `class_prompts()` gives the zero-shot prompts, one per label.
    """

    outputs = ("image", "text", "label")
    shapes = "-> image: float[B, 3, image_size, image_size], text: long[B, seq_len] < tokenizer_vocab, label: long[B] < 10"
    token_policy = "caption"

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        image_size: int = 16,
        batch_size: int = 32,
        train_fraction: float = 0.8,
        seed: int = 0,
        normalize: bool = True,
        seq_len: int = 32,
        vocab: Literal["bytes"] = "bytes",
        templates: list[str] = _DIGIT_TEMPLATES,
        shuffle: bool = True,
        drop_last: bool = True,
        tokenizer: str = "bytes",
        text_clean: Literal["none", "lower", "nopunct"] = "none",
        pad_token: str = "",
    ) -> None:
        super().__init__(split, image_size, batch_size, train_fraction, seed, normalize, shuffle, drop_last)
        if vocab != "bytes":
            raise ValueError(f"vocab must be 'bytes', got {vocab!r}")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(
                "templates must be a non-empty list of strings with one '{}' for the digit's name"
            )
        self.encoder = caption_encoder(type(self).__name__, tokenizer, seq_len, text_clean, pad_token)
        length = self.encoder.length
        longest = max((t.format(n) for t in templates for n in embedded.DIGIT_NAMES), key=length)
        if length(longest) > seq_len:
            raise ValueError(
                f"seq_len = {seq_len} is too short for the caption {longest!r}, "
                f"which needs {length(longest)} tokens with its special tokens"
            )
        self.seq_len, self.vocab, self.templates = seq_len, vocab, list(templates)
        self.tokenizer = tokenizer

    @cached_property
    def _captions(self) -> torch.Tensor:
        """long [n, seq_len]: every sample's caption, encoded once."""
        labels = self._data[1]
        g = torch.Generator().manual_seed(self.seed + 1)
        pick = torch.randint(len(self.templates), (len(labels),), generator=g)
        texts = [t.format(name) for t in self.templates for name in embedded.DIGIT_NAMES]
        table = encode_many(self.encoder, texts).view(len(self.templates), 10, self.seq_len)
        return table[pick, labels]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self._data
        return {"image": x[i], "text": self._captions[i], "label": y[i]}

    def spec(self) -> Spec:
        base = super().spec()
        return {"image": base["image"], "text": ((self.seq_len,), torch.long), "label": base["label"]}

    def class_prompts(self, template: str | None = None) -> torch.Tensor:
        """long [10, seq_len]: one encoded prompt per digit (default: the first template)."""
        return encode_many(self.encoder, embedded.digit_prompts(template or self.templates[0]))

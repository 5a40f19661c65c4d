"""Deterministic random data for benchmarks and smoke tests: no files, any size."""

from __future__ import annotations

from typing import Literal

import torch

from l3m.data.sources.base import Source, Spec
from l3m.data.tokens import BOS_ID, BYTE_OFFSET, EOS_ID
from l3m.registry import register


@register("source")
class Synthetic(Source):
    """`length` random samples; sample i depends only on (seed, i).

    Its ports are generic, because `kind` decides what they hold:
    - "image": `input` float [3, S, S] (standard normal), `target` long [] in [0, num_classes);
    - "tokens": `input` long [seq_len] in [0, vocab), `target` the same sequence shifted by one;
    - "image_text": `input` an image as above, `target` a caption long [seq_len] (BOS, random
      ids in [3, vocab), EOS: the caption convention of `l3m.data.tokens`).
    """

    outputs = ("input", "target")
    shapes = "@synthetic_source"  # `kind` decides what the ports hold

    def __init__(
        self,
        kind: Literal["image", "tokens", "image_text"] = "image",
        image_size: int = 32,
        num_classes: int = 10,
        vocab: int = 256,
        seq_len: int = 64,
        length: int = 1024,
        batch_size: int = 8,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(batch_size, shuffle, drop_last)
        if kind not in ("image", "tokens", "image_text"):
            raise ValueError(f"kind must be 'image', 'tokens' or 'image_text', got {kind!r}")
        if length < 1 or seq_len < 1 or image_size < 1 or num_classes < 1:
            raise ValueError("length, seq_len, image_size and num_classes must be positive")
        if kind == "image_text" and (seq_len < 2 or vocab <= BYTE_OFFSET):
            raise ValueError(f"image_text needs seq_len >= 2 and vocab > {BYTE_OFFSET}")
        self.kind, self.image_size, self.num_classes = kind, image_size, num_classes
        self.vocab, self.seq_len, self.length, self.seed = vocab, seq_len, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(f"sample {i} out of range for {self.length} samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        if self.kind == "tokens":
            w = torch.randint(self.vocab, (self.seq_len + 1,), generator=g)
            return {"input": w[:-1], "target": w[1:]}
        s = self.image_size
        image = torch.randn(3, s, s, generator=g)
        if self.kind == "image":
            return {"input": image, "target": torch.randint(self.num_classes, (), generator=g)}
        text = torch.randint(BYTE_OFFSET, self.vocab, (self.seq_len,), generator=g)
        text[0], text[-1] = BOS_ID, EOS_ID
        return {"input": image, "target": text}

    def spec(self) -> Spec:
        s = self.image_size
        image = ((3, s, s), torch.float32)
        if self.kind == "tokens":
            return {"input": ((self.seq_len,), torch.long), "target": ((self.seq_len,), torch.long)}
        if self.kind == "image":
            return {"input": image, "target": ((), torch.long)}
        return {"input": image, "target": ((self.seq_len,), torch.long)}

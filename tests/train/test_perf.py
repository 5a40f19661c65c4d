"""Throughput counting: tokens are integer sequences, not per-sample integers."""

import torch

from l3m.train.perf import batch_size, count_tokens


def test_tokens_are_integer_sequences_only():
    batch = {"tokens": torch.zeros(4, 16, dtype=torch.long), "prefix_len": torch.ones(4, dtype=torch.long),
             "label": torch.zeros(4, dtype=torch.long), "mask": torch.ones(4, 16, dtype=torch.bool),
             "image": torch.zeros(4, 3, 8, 8)}
    assert count_tokens(batch, list(batch)) == 64
    assert count_tokens(batch, ["image", "prefix_len"]) == 0
    assert batch_size(batch, ["image"]) == 4

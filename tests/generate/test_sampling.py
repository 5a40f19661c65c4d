"""Greedy at temperature 0; nucleus sampling keeps only the most likely tokens up to top_p."""

from __future__ import annotations

import pytest
import torch

from l3m.generation.sampling import check_sampling, next_tokens


def test_temperature_zero_is_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    assert next_tokens(logits, 0.0, 1.0, None).tolist() == [1, 0]


def test_a_small_top_p_keeps_only_the_most_likely_token():
    logits = torch.randn(4, 50)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(next_tokens(logits, 1.0, 1e-6, g), logits.argmax(-1))


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(next_tokens(logits, 1.0, 0.7, g)) for _ in range(200)}
    assert drawn == {0, 1}  # 0.5 + 0.3 reach 0.7; the tail is never drawn


@pytest.mark.parametrize("temperature, top_p", [(-1.0, 1.0), (1.0, 0.0), (1.0, 1.5), (float("nan"), 1.0)])
def test_bad_settings_are_refused(temperature, top_p):
    with pytest.raises(ValueError):
        check_sampling(temperature, top_p)

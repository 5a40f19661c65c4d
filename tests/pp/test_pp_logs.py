"""What the last pipeline stage sends the others is JSON in a byte tensor, never a pickle, and
round-trips exactly (values, dtypes, shapes, NaN)."""

from __future__ import annotations

import pytest
import torch

from l3m.dist.pp import _decode, _encode


def test_step_records_round_trip_exactly():
    sums = {"loss": torch.tensor(2.718281828, dtype=torch.float32), "ce": torch.tensor(float("nan"))}
    reduced = {"ppl": torch.tensor([123.456789012345678, 7.0], dtype=torch.float64)}
    got_sums, got_reduced = _decode(_encode((sums, reduced)))
    for want, got in ((sums, got_sums), (reduced, got_reduced)):
        assert want.keys() == got.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)
    assert _decode(_encode(None)) is None


def test_anything_else_is_refused():
    with pytest.raises(TypeError, match="cannot send a object"):
        _encode(object())

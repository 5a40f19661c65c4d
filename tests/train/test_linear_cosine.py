"""LinearCosine: fvcore's Linear(start -> lr) + Cosine(lr -> end) composite, queried at i / T."""

import math

import pytest
import torch

from l3m.train.schedules import LinearCosine


def _opt(lr, scales=(1.0,)):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * s} for s in scales]
    return torch.optim.SGD(params, lr=lr)


def _fvcore(where, lengths, start, peak, end):
    """CompositeParamScheduler([Linear(start, peak), Cosine(peak, end)], lengths, rescaled), as
    fvcore evaluates it (phase switch at where + 1e-6 > cumulative length)."""
    if where + 1e-6 <= lengths[0]:
        return start + (peak - start) * where / lengths[0]
    x = (where - lengths[0]) / lengths[1]
    return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * x))


@pytest.mark.parametrize(
    ("total", "warmup", "lengths"),
    [(1000, 0.025, (0.025, 0.975)), (1000, 100, (0.1, 0.9)), (640, 0.016, (0.016, 0.984))],
)
def test_values_match_the_fvcore_composite(total, warmup, lengths):
    sched = LinearCosine(_opt(1e-3), total, warmup=warmup, start_lr=1e-6, end_lr=1e-5)
    base = sched.base_lrs[0]
    for i in range(total):
        want = _fvcore(i / total, lengths, 1e-6, 1e-3, 1e-5)
        assert base * sched.lr_lambdas[0](i) == pytest.approx(want, rel=1e-9, abs=1e-15), i


def test_known_points_and_stepping():
    opt = _opt(1e-3)
    sched = LinearCosine(opt, 110, warmup=10, start_lr=1e-6, end_lr=1e-5)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)  # the first step uses start_lr exactly
    assert lrs[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert 1e-5 < lrs[-1] < 1.05e-5  # never quite reaches end_lr


def test_group_scales_scale_the_whole_curve():
    opt = _opt(2e-3, scales=(1.0, 0.5))
    sched = LinearCosine(opt, 100, warmup=0.1, start_lr=0.0, end_lr=0.0)
    for _ in range(37):
        opt.step()
        sched.step()
    lr0, lr1 = (g["lr"] for g in opt.param_groups)
    assert lr1 == pytest.approx(0.5 * lr0) and lr0 < 2e-3


def test_bad_settings():
    with pytest.raises(ValueError, match="longer"):
        LinearCosine(_opt(1e-3), 100, warmup=200)
    with pytest.raises(ValueError, match="non-negative"):
        LinearCosine(_opt(1e-3), 100, warmup=10, start_lr=-1.0)

"""Learning-rate schedules: values at known steps, per-group scales, resumption."""

import math

import pytest
import torch

from l3m.registry import RUNTIME_PARAMS, entries
from l3m.train.schedules import Constant, InverseSqrt, WarmupCosine, WarmupLinear, warmup_steps


def _opt(*lrs):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def _factors(sched, steps):
    """The factor in effect at each step 0..steps (the lr the optimizer uses at that step)."""
    base = sched.base_lrs[0]
    out = []
    for _ in range(steps + 1):
        out.append(sched.optimizer.param_groups[0]["lr"] / base)
        sched.optimizer.step()
        sched.step()
    return out


def test_warmup_steps():
    assert warmup_steps(0.1, 200) == 20 and warmup_steps(10, 200) == 10 and warmup_steps(0, 5) == 0
    with pytest.raises(ValueError, match="longer"):
        warmup_steps(300, 200)


def test_warmup_cosine_values():
    f = _factors(WarmupCosine(_opt(1.0), total_steps=110, warmup=10, min_lr_ratio=0.1), 110)
    assert f[0] == pytest.approx(0.1) and f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert f[110] == pytest.approx(0.1)


def test_warmup_linear_values():
    f = _factors(WarmupLinear(_opt(1.0), total_steps=100, warmup=0.2), 100)
    assert f[0] == pytest.approx(1 / 20) and f[19] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.5) and f[100] == pytest.approx(0.0)


def test_constant_and_inverse_sqrt():
    c = _factors(Constant(_opt(1.0), total_steps=50, warmup=4), 50)
    assert c[0] == pytest.approx(0.25) and c[3] == c[4] == c[50] == pytest.approx(1.0)
    s = _factors(InverseSqrt(_opt(1.0), total_steps=100, warmup=4), 63)
    assert s[3] == pytest.approx(1.0) and s[15] == pytest.approx(0.5) and s[63] == pytest.approx(0.25)
    n = _factors(InverseSqrt(_opt(1.0), total_steps=100), 3)
    assert n == pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])


def test_each_group_keeps_its_own_scale():
    sched = WarmupCosine(_opt(1.0, 0.1), total_steps=10, warmup=0)
    for _ in range(5):
        sched.optimizer.step()
        sched.step()
    lrs = [g["lr"] for g in sched.optimizer.param_groups]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(0.05)


def test_resumed_schedule_continues_the_curve():
    a = WarmupCosine(_opt(1.0), total_steps=40, warmup=0.25)
    for _ in range(13):
        a.optimizer.step()
        a.step()
    b = WarmupCosine(_opt(1.0), total_steps=40, warmup=0.25)
    b.optimizer.load_state_dict(a.optimizer.state_dict())  # a resume restores both, as a checkpoint does
    b.load_state_dict(a.state_dict())
    assert _factors(a, 10) == pytest.approx(_factors(b, 10))


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_lr_ratio"):
        WarmupCosine(_opt(1.0), 10, min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="total_steps"):
        Constant(_opt(1.0), 0)


def test_registry_entries():
    schedules = {e.name: e for e in entries("schedule")}
    assert {"WarmupCosine", "WarmupLinear", "Constant", "InverseSqrt"} <= set(schedules)
    for e in schedules.values():
        params = list(e.signature.parameters.values())
        assert [p.name for p in params[: RUNTIME_PARAMS["schedule"]]] == ["optimizer", "total_steps"]
        assert all(p.name in e.type_hints and p.default is not p.empty for p in params[2:])

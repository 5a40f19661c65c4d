"""AdamLH: Adam whose weight decay follows the schedule (shrink `wd * lr_t / peak_lr` per step)."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from l3m.registry import lookup
from l3m.train.optim import AdamLH, AdamLHOptimizer

FIXTURE = Path(__file__).parent / "fixtures" / "adamlh_reference.json"


def _by_hand(w, g_seq, lrs, peak, wd, b1, b2, eps):
    """Plain-Python AdamLH on a list of floats."""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    w = list(w)
    for t, (g, lr) in enumerate(zip(g_seq, lrs), start=1):
        for i in range(len(w)):
            w[i] *= 1 - wd * lr / peak
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            denom = math.sqrt(v[i]) / math.sqrt(1 - b2**t) + eps
            w[i] -= lr / (1 - b1**t) * m[i] / denom
    return w


def test_matches_a_hand_computation_and_differs_from_torch_adamw():
    lrs = [0.01, 0.05, 0.1, 0.02]
    grads = [[0.5, -1.0, 2.0], [0.1, 0.3, -0.2], [-1.5, 0.0, 0.7], [0.2, 0.2, 0.2]]
    w0 = [1.0, -2.0, 0.5]
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = AdamLH([("w", p)], lr=0.1, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.2, decay_1d=True)
    assert isinstance(opt, AdamLHOptimizer)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    want = _by_hand(w0, grads, lrs, 0.1, 0.2, 0.9, 0.95, 1e-8)
    assert p.detach().tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
    # torch's AdamW shrinks by lr * wd, not wd * lr / peak: same run, other numbers.
    q = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    ref = torch.optim.AdamW([q], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.2)
    for g, lr in zip(grads, lrs):
        ref.param_groups[0]["lr"] = lr
        q.grad = torch.tensor(g, dtype=torch.float64)
        ref.step()
    assert not torch.allclose(p.detach(), q.detach(), rtol=1e-6, atol=1e-6)


def test_matches_the_original_ml_l3m_class():
    """Replays the toy problem that tools/make_adamlh_fixture.py ran through the original AdamLH."""
    data = json.loads(FIXTURE.read_text())
    w = torch.nn.Parameter(torch.tensor(data["w"], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(data["b"], dtype=torch.float64))
    opt = AdamLH([("layer.weight", w), ("layer.bias", b)], lr=data["peak_lr"], betas=data["betas"],
                 eps=data["eps"], weight_decay=data["weight_decay"], no_decay=["*bias*"])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, data["weight_decay"]}
    for i, lr in enumerate(data["lrs"]):
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        w.grad = torch.tensor(data["grads_w"][i], dtype=torch.float64)
        b.grad = torch.tensor(data["grads_b"][i], dtype=torch.float64)
        opt.step()
    assert torch.allclose(w.detach(), torch.tensor(data["final_w"], dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert torch.allclose(b.detach(), torch.tensor(data["final_b"], dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_decay_follows_the_schedule_not_the_peak():
    """With zero gradients only the decay acts: w * (1 - wd * lr / peak) per step."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = AdamLH([("w", p)], lr=1e-3, weight_decay=1e-4)
    opt.param_groups[0]["lr"] = 5e-4  # half the peak, e.g. mid-schedule
    p.grad = torch.zeros(2, 2)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((2, 2), 1 - 1e-4 * 0.5))


def test_state_round_trips_and_bad_settings_fail():
    m = torch.nn.Linear(3, 2)
    opt = AdamLH(m.named_parameters(), lr=1e-2, weight_decay=1e-4)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    again = AdamLH(m.named_parameters(), lr=1e-2, weight_decay=1e-4)
    again.load_state_dict(opt.state_dict())
    assert float(again.state[m.weight]["step"]) == 1.0
    assert torch.equal(again.state[m.weight]["exp_avg"], opt.state[m.weight]["exp_avg"])
    with pytest.raises(ValueError, match="betas"):
        AdamLH(m.named_parameters(), betas=[0.9])
    with pytest.raises(ValueError):
        AdamLH(m.named_parameters(), betas=[0.9, 1.0])
    assert lookup("AdamLH").kind == "optimizer"


def test_distributed_checkpoint_state_round_trip():
    """The trainer saves optimizer state through torch.distributed.checkpoint's state-dict API."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = AdamLH(m.named_parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(2):
        m(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    model_sd, optim_sd = copy.deepcopy(get_state_dict(m, opt))  # as if written and read back (no aliasing)
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt2 = AdamLH(m2.named_parameters(), lr=1e-2, weight_decay=1e-3)
    set_state_dict(m2, opt2, model_state_dict=model_sd, optim_state_dict=optim_sd)
    x = torch.randn(5, 3)
    for model, o in ((m, opt), (m2, opt2)):
        model(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert float(opt2.state[m2[0].weight]["step"]) == 3.0

"""Optimizers: parameter groups from declared rules, LARS, and their registry entries."""

import pytest
import torch
from torch import nn

from l3m.registry import RUNTIME_PARAMS, entries
from l3m.train.optim import LARS, SGD, AdamW, LARSOptimizer, clean_name, param_groups


class Toy(nn.Module):
    """Names shaped like a MetaModel's: stages, a trunk with numbered layers, a head."""

    def __init__(self, dim=4, depth=2):
        super().__init__()
        self.preprocessor = nn.ModuleDict({"embed": nn.Linear(dim, dim)})
        layers = nn.ModuleList(
            nn.ModuleDict({"fc": nn.Linear(dim, dim), "norm": nn.LayerNorm(dim)}) for _ in range(depth)
        )
        self.trunk = nn.ModuleDict({"blocks": nn.ModuleDict({"layers": layers})})
        self.head = nn.ModuleDict({"lm": nn.Linear(dim, 3, bias=False)})


def _by_name(groups, key):
    return {n: g[key] for g in groups for n in g["param_names"]}


def test_weight_decay_rules():
    m = Toy()
    groups = param_groups(m.named_parameters(), lr=1.0, weight_decay=0.1, no_decay=["head.*"])
    wd = _by_name(groups, "weight_decay")
    assert wd["trunk.blocks.layers.0.fc.weight"] == 0.1
    assert wd["trunk.blocks.layers.0.fc.bias"] == 0.0  # 1-D
    assert wd["trunk.blocks.layers.1.norm.weight"] == 0.0
    assert wd["head.lm.weight"] == 0.0  # glob
    with_1d = param_groups(m.named_parameters(), lr=1.0, weight_decay=0.1, no_decay=["*norm*"], decay_1d=True)
    wd = _by_name(with_1d, "weight_decay")
    assert wd["trunk.blocks.layers.0.fc.bias"] == 0.1 and wd["trunk.blocks.layers.0.norm.bias"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_frozen_parameters_are_left_out():
    m = Toy()
    m.preprocessor.requires_grad_(False)
    names = [
        n for g in param_groups(m.named_parameters(), lr=1.0, weight_decay=0.0) for n in g["param_names"]
    ]
    assert names and not any(n.startswith("preprocessor") for n in names)
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(m.named_parameters(), lr=1.0, weight_decay=0.0)


def test_layer_decay_values():
    groups = param_groups(Toy(depth=2).named_parameters(), lr=2.0, weight_decay=0.0, layer_decay=0.5)
    scale, lr = _by_name(groups, "lr_scale"), _by_name(groups, "lr")
    assert scale["head.lm.weight"] == 1.0
    assert scale["trunk.blocks.layers.1.fc.weight"] == 0.5
    assert scale["trunk.blocks.layers.0.norm.bias"] == 0.25
    assert scale["preprocessor.embed.weight"] == 0.125
    assert lr["preprocessor.embed.weight"] == 0.25


def test_stage_lr_last_rule_wins_and_bad_rules_fail():
    groups = param_groups(
        Toy().named_parameters(), lr=1.0, weight_decay=0.0, stage_lr=["*=0.5", "head.*=10", "*.norm.*=0"]
    )
    scale = _by_name(groups, "lr_scale")
    assert scale["head.lm.weight"] == 10.0
    assert scale["trunk.blocks.layers.0.fc.weight"] == 0.5
    assert scale["trunk.blocks.layers.0.norm.weight"] == 0.0
    for bad in ["head.*", "head.*=fast", "=2", "x=-1"]:
        with pytest.raises(ValueError, match="glob=scale"):
            param_groups(Toy().named_parameters(), lr=1.0, weight_decay=0.0, stage_lr=[bad])


def test_wrapper_segments_do_not_change_matching():
    assert (
        clean_name("trunk.blocks.layers.3._orig_mod.attn._checkpoint_wrapped_module.w")
        == "trunk.blocks.layers.3.attn.w"
    )
    p = nn.Parameter(torch.zeros(2, 2))
    q = nn.Parameter(torch.zeros(2, 2))
    groups = param_groups(
        [("trunk.layers.0._orig_mod.w", p), ("head._orig_mod.w", q)],
        lr=1.0,
        weight_decay=0.1,
        no_decay=["head.w"],
        layer_decay=0.5,
    )
    assert _by_name(groups, "weight_decay") == {"trunk.layers.0._orig_mod.w": 0.1, "head._orig_mod.w": 0.0}
    assert _by_name(groups, "lr_scale")["trunk.layers.0._orig_mod.w"] == 0.5


def test_adamw_builds_groups_and_steps():
    m = Toy()
    opt = AdamW(m.named_parameters(), lr=0.1, betas=[0.8, 0.9], weight_decay=0.05, layer_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    before = m.head.lm.weight.detach().clone()
    m.head.lm(m.trunk.blocks.layers[0].fc(torch.randn(2, 4))).sum().backward()
    opt.step()
    assert not torch.equal(before, m.head.lm.weight)
    state = opt.state_dict()
    again = AdamW(m.named_parameters(), lr=0.1, betas=[0.8, 0.9], weight_decay=0.05, layer_decay=0.5)
    again.load_state_dict(state)
    assert again.param_groups[0]["param_names"] == opt.param_groups[0]["param_names"]
    with pytest.raises(ValueError, match="betas"):
        AdamW(m.named_parameters(), betas=[0.9])


def test_adamw_is_fused_by_default_where_torch_has_the_kernel():
    m = Toy()
    assert AdamW(m.named_parameters()).defaults["fused"]  # the CPU has fused Adam kernels
    for kwargs, fused, foreach in (({"fused": False}, None, None), ({"foreach": True}, None, True),
                                   ({"fused": False, "foreach": False}, None, False)):
        opt = AdamW(m.named_parameters(), **kwargs)  # an explicit choice in the file is kept
        assert (opt.defaults["fused"], opt.defaults["foreach"]) == (fused, foreach), kwargs
    with torch.device("meta"):  # no kernel for these parameters: torch's own default
        assert not AdamW(Toy().named_parameters()).defaults["fused"]
    # the fused step is AdamW's step
    ref = Toy()
    ref.load_state_dict(m.state_dict())
    opts = [AdamW(x.named_parameters(), lr=0.1, weight_decay=0.05, fused=f) for x, f in ((m, None), (ref, False))]
    for x, opt in zip((m, ref), opts):
        torch.manual_seed(0)
        for _ in range(2):
            x.head.lm(x.trunk.blocks.layers[0].fc(torch.randn(2, 4))).sum().backward()
            opt.step()
            opt.zero_grad()
    for (n, a), b in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda msg, n=n: f"{n}: {msg}")


def test_sgd_settings():
    opt = SGD(Toy().named_parameters(), lr=0.5, momentum=0.8, nesterov=True, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in opt.param_groups)


def test_lars_one_step_matches_the_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([("w", w), ("b", b)], lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01)
    adapt = {n: g["adapt"] for g in opt.param_groups for n in g["param_names"]}
    assert adapt == {"w": True, "b": False}
    w.grad = torch.tensor([[0.0, 2.0]])  # |g| = 2, trust = 0.01 * 5 / 2
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0 - 0.1 * 0.025 * 2.0]]))
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))


def test_lars_decreases_loss_on_a_toy_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 1) + 0.5
    model = nn.Linear(8, 1)
    opt = LARS(model.named_parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.1)
    assert isinstance(opt, LARSOptimizer)

    def loss():
        return nn.functional.mse_loss(model(x), y)

    start = loss().item()
    for _ in range(50):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * start


def test_registry_entries_are_factories_of_named_params():
    optimizers = {e.name: e for e in entries("optimizer")}
    assert {"AdamW", "SGD", "LARS"} <= set(optimizers)
    assert RUNTIME_PARAMS["optimizer"] == 1
    for e in optimizers.values():
        params = list(e.signature.parameters.values())
        assert params[0].name == "named_params"
        for p in params[RUNTIME_PARAMS["optimizer"] :]:
            assert p.name in e.type_hints and p.default is not p.empty, (e.name, p.name)

"""Weight sharing: between blocks (`share = "<block>"`) and across a Transformer's layers
(`share_layers = true`). One tensor, counted once, trained by every use, saved and loaded intact;
lint names a bad target (E790), another class (E791) and other shapes (E792)."""

from __future__ import annotations

import copy

import pytest
import torch

from l3m.dsl.shapes.params import static_params
from l3m.model.blocks.transformer import Transformer
from l3m.model.build import build_model, materialize

PROG = """l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 4) -> image, label }
model cnn {
  trunk {
    stem:  Conv2d(in_channels = 3, out_channels = 4, padding = same)  image -> x
    conv1: Conv2d(in_channels = 4, out_channels = 4, padding = same)  x -> x
    conv2: Conv2d(in_channels = 4, out_channels = 4, padding = same, share = SHARE)  x -> x
    pool:  GlobalAvgPool()  x -> x
  }
  head { fc: Classifier(dim = 4, num_classes = 10)  x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
"""


def _program(compile_text, share='"conv1"'):
    return compile_text(PROG.replace("SHARE", share))


def _errors(c):
    return [(d.code, d.span.line, d.span.col, d.message) for d in c.diagnostics if d.severity == "error"]


@pytest.fixture
def shared(compile_text):
    c = _program(compile_text)
    assert c.ok, _errors(c)
    return materialize(build_model(c.program), "cpu")


def test_shared_parameters_are_one_tensor_counted_once(shared):
    c1, c2 = shared.get_submodule("cnn.trunk.conv1"), shared.get_submodule("cnn.trunk.conv2")
    assert c2.weight is c1.weight and c2.bias is c1.bias
    names = [n for n, _ in shared.named_parameters()]
    assert not any(n.startswith("cnn.trunk.conv2.") for n in names)
    conv = 4 * 4 * 9 + 4
    stem, fc = 3 * 4 * 9 + 4, 4 * 10 + 10
    assert sum(p.numel() for p in shared.parameters()) == stem + conv + fc


def test_graph_counts_a_shared_tensor_once(compile_text):
    from l3m.dsl.render import to_text

    c = _program(compile_text)
    text = to_text(c.program, c.flow, c.shapes)
    assert "conv2: Conv2d" in text and "[the weight of conv1]" in text
    total = (3 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 10 + 10)
    assert f"model cnn · {total} params" in text, text


def test_gradients_from_both_uses_reach_the_shared_tensor(shared):
    """The shared weight's gradient is the sum of what two independent copies would get."""
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 8, 8)}
    shared(batch)["logits"].square().sum().backward()
    got = shared.get_submodule("cnn.trunk.conv1").weight.grad.clone()

    untied = copy.deepcopy(shared)
    untied.zero_grad()
    c2 = untied.get_submodule("cnn.trunk.conv2")
    c2.weight = torch.nn.Parameter(c2.weight.detach().clone())  # same values, its own tensor
    untied(batch)["logits"].square().sum().backward()
    parts = untied.get_submodule("cnn.trunk.conv1").weight.grad + c2.weight.grad
    assert c2.weight.grad.abs().sum() > 0
    torch.testing.assert_close(got, parts)


def test_save_and_load_round_trip_keeps_the_share(shared, compile_text, tmp_path):
    with torch.no_grad():
        shared.get_submodule("cnn.trunk.conv1").weight.add_(1.0)
    path = tmp_path / "m.pt"
    torch.save(shared.state_dict(), path)
    fresh = materialize(build_model(_program(compile_text).program), "cpu")
    fresh.load_state_dict(torch.load(path))
    c1, c2 = fresh.get_submodule("cnn.trunk.conv1"), fresh.get_submodule("cnn.trunk.conv2")
    assert c2.weight is c1.weight
    torch.testing.assert_close(c1.weight, shared.get_submodule("cnn.trunk.conv1").weight)
    x = {"image": torch.randn(2, 3, 8, 8)}
    torch.testing.assert_close(fresh(x)["logits"], shared(x)["logits"])


def test_a_chain_resolves_to_its_root(compile_text):
    c = compile_text(PROG.replace("SHARE", '"conv1"').replace(
        "    pool:", '    conv3: Conv2d(in_channels = 4, out_channels = 4, padding = same, share = "conv2")  x -> x\n'
                    "    pool:"))
    assert c.ok, _errors(c)
    m = build_model(c.program)
    w = m.get_submodule("cnn.trunk.conv1").weight
    assert m.get_submodule("cnn.trunk.conv3").weight is w and m.get_submodule("cnn.trunk.conv2").weight is w


@pytest.mark.parametrize(("share", "code", "words"), [
    ('"conv"', "E790", "'conv' names no block"),
    ('"conv2"', "E790", "cannot share its own parameters"),
    ('"pool"', "E791", "a GlobalAvgPool"),
    ('"stem"', "E792", "its 'weight' is [4, 4, 3, 3], the same parameter of 'stem' is [4, 3, 3, 3]"),
])
def test_lint_reports_a_bad_share_at_the_argument(compile_text, share, code, words):
    errors = _errors(_program(compile_text, share))
    assert [e[0] for e in errors] == [code], errors
    _, line, col, message = errors[0]
    assert line == 7 and col == PROG.splitlines()[6].index("share") + 1
    assert words in message, message


def test_lint_reports_a_loop(compile_text):
    text = PROG.replace("SHARE", '"conv1"').replace(
        "conv1: Conv2d(in_channels = 4, out_channels = 4, padding = same)",
        'conv1: Conv2d(in_channels = 4, out_channels = 4, padding = same, share = "conv2")')
    codes = {(e[0], e[1]) for e in _errors(compile_text(text))}
    assert codes == {("E790", 6), ("E790", 7)}


# -- across repeated layers ----------------------------------------------------------------------

T = dict(dim=16, depth=3, heads=2)


def test_share_layers_is_one_layer_applied_depth_times():
    torch.manual_seed(0)
    shared, plain = Transformer(**T, share_layers=True), Transformer(**T)
    assert shared.layers[0] is shared.layers[1] is shared.layers[2]
    per_layer = sum(p.numel() for p in plain.layers[0].parameters())
    total = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in shared.parameters()) == total - 2 * per_layer
    # lint's static names are the live ones: layers.0 only
    assert static_params("Transformer", dict(T, share_layers=True)) == \
        [(n, tuple(p.shape)) for n, p in shared.named_parameters()]
    assert not any(n.startswith("layers.1.") for n, _ in shared.named_parameters())


def test_share_layers_gradient_is_the_sum_over_the_layers():
    torch.manual_seed(0)
    shared = Transformer(**T, share_layers=True)
    unshared = Transformer(**T)
    for i in range(3):  # the same weights in every layer, each its own tensor
        unshared.layers[i].load_state_dict(shared.layers[0].state_dict())
    unshared.norm.load_state_dict(shared.norm.state_dict())
    x = torch.randn(2, 5, 16)
    ys, ya = shared(x)[0], unshared(x)[0]
    torch.testing.assert_close(ys, ya)
    ys.square().sum().backward()
    ya.square().sum().backward()
    for name, p in shared.layers[0].named_parameters():
        want = sum(dict(unshared.layers[i].named_parameters())[name].grad for i in range(3))
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)


def test_share_layers_round_trips_through_a_state_dict():
    a, b = Transformer(**T, share_layers=True), Transformer(**T, share_layers=True)
    b.load_state_dict(a.state_dict())
    assert b.layers[0] is b.layers[2]
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(a(x)[0], b(x)[0])


def test_share_layers_with_moe_is_refused_at_lint(compile_text):
    c = compile_text("""l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 4) -> image, label }
model m {
  preprocessor { p: PatchEmbed(dim = 16, patch = 4) image -> x }
  trunk { t: Transformer(dim = 16, depth = 2, heads = 2, moe_every = 2, share_layers = true) x -> x }
  postprocessor { pool: AvgPool() x -> x }
  head { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
""")
    assert [e[0] for e in _errors(c)] == ["E754"], _errors(c)


def test_linear_blocks_share_too(compile_text):
    c = compile_text("""l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 4) -> image, label }
model m {
  preprocessor { p: PatchEmbed(dim = 16, patch = 4) image -> x }
  trunk {
    a: Linear(in_features = 16, out_features = 16)  x -> x
    b: Linear(in_features = 16, out_features = 16, share = "m.trunk.a")  x -> x
  }
  postprocessor { pool: AvgPool() x -> x }
  head { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
""")
    assert c.ok, _errors(c)
    m = materialize(build_model(c.program), "cpu")
    a, b = m.get_submodule("m.trunk.a"), m.get_submodule("m.trunk.b")
    assert b.weight is a.weight and b.bias is a.bias

"""Convolutional blocks (l3m/model/blocks/conv.py): they compute what torch's own layers compute, lint's
shape rule gives the shapes they produce, and bad arguments are lint errors at the argument."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l3m.dsl.shapes.rules_conv import conv2d, pool2d
from l3m.dsl.shapes.spec import ShapeError, TensorType
from l3m.model.blocks.conv import AvgPool2d, BatchNorm, Conv2d, GlobalAvgPool, GroupNorm, MaxPool2d
from l3m.model.init import check_initialised

CONVS = [
    dict(in_channels=3, out_channels=8),
    dict(in_channels=3, out_channels=8, kernel=5, stride=2, padding=1),
    dict(in_channels=4, out_channels=8, kernel=[3, 1], stride=[1, 2], padding=[1, 0], groups=2),
    dict(in_channels=4, out_channels=4, kernel=3, dilation=2, padding="same", groups=4, bias=False),
    dict(in_channels=3, out_channels=6, kernel=4, padding="valid"),
]


@pytest.mark.parametrize("args", CONVS)
@pytest.mark.parametrize("hw", [(11, 9), (16, 16)])
def test_conv_rule_gives_the_shape_the_block_produces(args, hw):
    conv = Conv2d(**args)
    x = torch.randn(2, args["in_channels"], *hw)
    got = tuple(conv(x).shape)
    rule = conv2d(args, {"x": TensorType("float", (2, args["in_channels"], *hw))})["x"]
    assert rule.dims == got and rule.dtype == "float"
    # the same as nn.Conv2d with the same weights
    ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(conv(x), ref)


def test_conv_rule_with_symbolic_sizes_and_errors():
    x = TensorType("float", ("B", 3, "H", "W"))
    out = conv2d(dict(in_channels=3, out_channels=8, kernel=3, stride=2, padding=1), {"x": x})["x"]
    assert out.dims == ("B", 8, "(H - 1) // 2 + 1", "(W - 1) // 2 + 1")
    same = conv2d(dict(in_channels=3, out_channels=8, padding="same"), {"x": x})["x"]
    assert same.dims == ("B", 8, "H", "W")
    with pytest.raises(ShapeError) as e:  # a 7-wide window on a 4x4 image
        conv2d(dict(in_channels=3, out_channels=8, kernel=7), {"x": TensorType("float", (2, 3, 4, 4))})
    assert e.value.arg == "kernel" and "does not fit in H = 4" in e.value.message
    with pytest.raises(ShapeError) as e:
        conv2d(dict(in_channels=4, out_channels=8), {"x": TensorType("float", (2, 3, 4, 4))})
    assert e.value.arg == "in_channels"
    with pytest.raises(ShapeError):  # tokens are not images
        conv2d(dict(in_channels=3, out_channels=8), {"x": TensorType("float", (2, 5, 3))})


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("args", [dict(), dict(kernel=3, stride=2, padding=1), dict(kernel=[2, 3], stride=1)])
def test_pools_match_torch_and_their_rule(cls, args):
    x = torch.randn(2, 3, 9, 8)
    pool = cls(**args)
    k = args.get("kernel", 2)
    torch_cls = nn.MaxPool2d if cls is MaxPool2d else nn.AvgPool2d
    ref = torch_cls(k if isinstance(k, int) else tuple(k), args.get("stride"), args.get("padding", 0))
    torch.testing.assert_close(pool(x), ref(x))
    assert pool2d(args, {"x": TensorType("float", tuple(x.shape))})["x"].dims == tuple(pool(x).shape)


def test_global_avg_pool():
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(GlobalAvgPool()(x), x.mean(dim=(2, 3)))


def test_batchnorm_matches_torch_in_training_and_evaluation():
    torch.manual_seed(0)
    bn, ref = BatchNorm(4, momentum=0.2), nn.BatchNorm2d(4, momentum=0.2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        ref.weight.copy_(bn.weight)
        ref.bias.copy_(bn.bias)
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5) * 3 + 1
        torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 3
    bn.eval()
    ref.eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(bn(x), ref(x))
    assert bn(x.bfloat16()).dtype == torch.bfloat16  # computed in float32, cast back


def test_synced_batchnorm_in_a_one_rank_group_equals_the_local_one():
    """The sync path (all-reduced sums) gives the local statistics, gradients and running averages."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = torch.randn(6, 3, 4, 4) * 2 + 0.5
        outs, grads, stats = [], [], []
        for sync in (False, True):
            bn = BatchNorm(3, sync=sync)
            with torch.no_grad():
                bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            xi = x.clone().requires_grad_(True)
            y = bn(xi)
            (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
            outs.append(y.detach())
            grads.append((xi.grad, bn.weight.grad, bn.bias.grad))
            stats.append((bn.running_mean.clone(), bn.running_var.clone()))
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
        for a, b in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(stats[1], stats[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_groupnorm_matches_torch():
    gn, ref = GroupNorm(2, 6), nn.GroupNorm(2, 6)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(gn.weight)
    x = torch.randn(3, 6, 4, 5)
    torch.testing.assert_close(gn(x), ref(x))


def test_every_block_initialises_all_its_tensors():
    for block in (Conv2d(3, 8), Conv2d(3, 8, init="pytorch"), Conv2d(3, 8, init="xavier_uniform"),
                  BatchNorm(4), GroupNorm(2, 4), GroupNorm(2, 4, affine=False)):
        check_initialised(block)


def test_kaiming_normal_is_he_init_by_fan_out():
    conv = Conv2d(64, 128, kernel=3)
    want = math.sqrt(2.0 / (128 * 9))
    assert abs(conv.weight.std().item() - want) / want < 0.05
    assert conv.bias is not None and not conv.bias.any()


LINT = """l3m 1
data { train: DigitsImages(image_size = 8, batch_size = 4) -> image, label }
model cnn {
  trunk {
    conv: CONV  image -> x
    pool: GlobalAvgPool()  x -> x
  }
  head { fc: Classifier(dim = 8, num_classes = 10)  x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
"""


def _lint(compile_text, conv: str):
    c = compile_text(LINT.replace("CONV", conv))
    return [(d.code, d.span.line, d.span.col, d.message) for d in c.diagnostics if d.severity == "error"]


def test_lint_accepts_a_fitting_convolution(compile_text):
    assert _lint(compile_text, "Conv2d(in_channels = 3, out_channels = 8, stride = 2, padding = 1)") == []


@pytest.mark.parametrize(("conv", "code", "arg", "words"), [
    ("Conv2d(in_channels = 3, out_channels = 8, kernel = 11)", "E755", "kernel", "does not fit in H = 8"),
    ("Conv2d(in_channels = 1, out_channels = 8)", "E755", "in_channels", "3 channels, but in_channels = 1"),
    ("Conv2d(in_channels = 3, out_channels = 8, groups = 2)", "E754", "groups", "groups (2) must divide in_channels"),
    ("Conv2d(in_channels = 3, out_channels = 8, stride = 2, padding = same)", "E754", "padding",
     "padding = same needs stride 1"),
])
def test_lint_reports_convolutions_that_cannot_work_at_the_argument(compile_text, conv, code, arg, words):
    errors = _lint(compile_text, conv)
    assert errors, conv
    got_code, line, col, message = errors[0]
    assert (got_code, line) == (code, 5) and words in message, errors
    assert col == len("    conv: ") + conv.index(f"{arg} =") + 1, errors

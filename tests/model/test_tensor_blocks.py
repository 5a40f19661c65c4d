"""The general tensor blocks (Add, Mul, Activation, Concat, Split, Reshape, Transpose, Flatten, Latents,
KeepVisible, InsertMaskTokens) compute what plain torch computes, and lint reports wrong axes and sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l3m import registry


def block(name: str, **kwargs):
    registry.load_builtins()
    return registry.lookup(name).obj(**kwargs)


def random_mask(b: int, n: int, k: int) -> torch.Tensor:
    order = torch.rand(b, n).argsort(dim=1)
    return torch.zeros(b, n, dtype=torch.bool).scatter(1, order[:, :k], True)


# ---- the functions ------------------------------------------------------------------------------------------

def test_add_and_mul_broadcast_like_torch():
    a, b, c = torch.randn(2, 5, 8), torch.randn(5, 1), torch.randn(8)
    assert torch.equal(block("Add")(a, b, c), a + b + c)
    assert torch.equal(block("Mul")(a, b), a * b)
    assert torch.equal(block("Add")(a), a)


@pytest.mark.parametrize(("fn", "ref"), [("gelu", F.gelu), ("relu", F.relu), ("silu", F.silu), ("tanh", torch.tanh),
                                         ("sigmoid", torch.sigmoid),
                                         ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh"))])
def test_activation(fn, ref):
    x = torch.randn(3, 4)
    assert torch.equal(block("Activation", fn=fn)(x), ref(x))


def test_activation_rejects_an_unknown_function():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        block("Activation", fn="swish")


def test_concat_keeps_dim_1_by_default_and_takes_any_axis():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 1, 4)
    assert torch.equal(block("Concat")(a, b), torch.cat([a, b], dim=1))
    c = torch.randn(2, 3, 6)
    assert torch.equal(block("Concat", axis=-1)(a, c), torch.cat([a, c], dim=-1))


def test_split_cuts_in_order_and_minus_one_is_the_rest():
    x = torch.randn(2, 7, 4)
    parts = block("Split", sizes=[1, -1, 2], axis=1)(x)
    want = torch.split(x, [1, 4, 2], dim=1)
    assert all(torch.equal(p, w) for p, w in zip(parts[:3], want))
    assert parts[3:] == (None,) * (len(parts) - 3)
    with pytest.raises(ValueError, match="do not cut"):
        block("Split", sizes=[3, 3])(torch.randn(2, 7))


def test_reshape_pattern_equals_reshape_and_permute():
    x = torch.randn(2, 12, 5)
    y = block("Reshape", pattern="B (H W) C -> B C H W", H=3)(x)
    assert torch.equal(y, x.reshape(2, 3, 4, 5).permute(0, 3, 1, 2))
    # patchify-like: split both axes and regroup
    img = torch.randn(2, 4, 6)
    y = block("Reshape", pattern="B (H p) (W q) -> B (H W) (p q)", p=2, q=3)(img)
    assert torch.equal(y, img.reshape(2, 2, 2, 2, 3).permute(0, 1, 3, 2, 4).reshape(2, 4, 6))
    z = torch.randn(2, 3, 4, 5)
    assert torch.equal(block("Reshape", pattern="B ... C -> B C ...")(z), z.permute(0, 3, 1, 2))
    assert torch.equal(block("Reshape", pattern="B ... C -> (B C) ...")(z), z.permute(0, 3, 1, 2).reshape(10, 3, 4))


@pytest.mark.parametrize(("pattern", "sizes", "message"), [
    ("B N C", {}, "must read"),
    ("B N -> B N C", {}, "C must appear on both sides"),
    ("B (H W) -> B H W", {}, "give the sizes"),
    ("B N N -> B N", {}, "appears twice"),
    ("B N -> N B", {"K": 2}, "name no axis"),
])
def test_reshape_rejects_bad_patterns(pattern, sizes, message):
    with pytest.raises(ValueError, match=message):
        block("Reshape", pattern=pattern, **sizes)


def test_transpose_permute_and_flatten():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(block("Permute", dims=[0, 3, 1, 2])(x), x.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="not a permutation"):
        block("Permute", dims=[0, 0, 1])
    assert torch.equal(block("Transpose")(x), x.transpose(1, 2))
    assert torch.equal(block("Transpose", dim0=0, dim1=-1)(x), x.transpose(0, -1))
    assert torch.equal(block("Flatten")(x), x.flatten(1))
    assert torch.equal(block("Flatten", start=1, end=2)(x), x.flatten(1, 2))


def test_latents_are_one_learned_array_repeated_over_the_batch():
    torch.manual_seed(0)
    lat = block("Latents", num=3, dim=8)
    out = lat(torch.zeros(5, 2, dtype=torch.long))
    assert out.shape == (5, 3, 8) and torch.equal(out[4], lat.latents)
    out.sum().backward()
    assert torch.equal(lat.latents.grad, torch.full((3, 8), 5.0))
    assert [n for n, _ in lat.named_parameters()] == ["latents"]


def test_keep_visible_gathers_the_unmasked_tokens_in_order():
    from l3m.data.generators import RandomMask

    torch.manual_seed(0)
    x = torch.randn(3, 10, 4)
    mask, visible = RandomMask(num_tokens=10, ratio=0.7)(x, rng=torch.Generator().manual_seed(0))
    want = x[~mask].reshape(3, 3, 4)  # boolean indexing keeps the order
    assert torch.equal(block("KeepVisible")(x, mask=mask), want)
    assert torch.equal(block("KeepVisible")(x, visible), want)  # from the indices: no host sync
    cls = torch.randn(3, 1, 4)
    kept = block("KeepVisible", offset=1)(torch.cat([cls, x], dim=1), visible)
    assert torch.equal(kept, torch.cat([cls, want], dim=1))
    with pytest.raises(ValueError, match="reads `visible`"):
        block("KeepVisible")(x)


def test_insert_mask_tokens_restores_the_order():
    torch.manual_seed(0)
    x, mask = torch.randn(3, 10, 4), random_mask(3, 10, 6)
    keep, insert = block("KeepVisible"), block("InsertMaskTokens", dim=4)
    out = insert(keep(x, mask=mask), mask)
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(out[mask], insert.mask_token[0, 0].expand(int(mask.sum()), 4))
    out.sum().backward()
    assert torch.equal(insert.mask_token.grad[0, 0], torch.full((4,), float(mask.sum())))
    # with a cls token in front
    cls = torch.randn(3, 1, 4)
    kept = block("KeepVisible", offset=1)(torch.cat([cls, x], 1), mask=mask)
    out = block("InsertMaskTokens", dim=4, offset=1)(kept, mask)
    assert torch.equal(out[:, 0], cls[:, 0]) and torch.equal(out[:, 1:][~mask], x[~mask])


def test_masks_must_hide_as_many_tokens_in_every_sample():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    with pytest.raises(ValueError, match="different numbers of visible tokens"):
        block("KeepVisible")(x, mask=mask)
    with pytest.raises(ValueError, match="different numbers of visible tokens"):
        block("InsertMaskTokens", dim=3)(torch.randn(2, 3, 3), mask)
    with pytest.raises(ValueError, match="x has 3 tokens, but the mask leaves 2 of 4 visible"):
        block("InsertMaskTokens", dim=3)(torch.randn(2, 3, 3), random_mask(2, 4, 2))


def test_pixel_loss_scores_only_the_masked_patches():
    torch.manual_seed(0)
    loss = block("PixelLoss", patch=4, norm_pix=True)
    image, pred = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 48)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    err = (pred - loss.target(image)).pow(2).mean(dim=-1)
    assert torch.allclose(loss(pred, image, mask=mask), err[mask].mean())
    assert torch.allclose(loss(pred, image), err.mean())  # without a mask: every patch, as before
    prefix = torch.tensor([1, 0])
    both = loss(pred, image, prefix, mask)
    assert torch.allclose(both, torch.stack([err[0, 2], err[1, 3]]).mean())
    shifted = block("PixelLoss", patch=4, norm_pix=True, shift=True)  # prediction i scores patch i + 1
    err = (pred[:, :-1] - loss.target(image)[:, 1:]).pow(2).mean(dim=-1)
    assert torch.allclose(shifted(pred, image, mask=mask), err[mask[:, 1:]].mean())


# ---- lint --------------------------------------------------------------------------------------------------

PROGRAM = """l3m 1
data {
  train: DigitsImages(image_size = 16, batch_size = 4) -> image, label
  mask:  RandomMask(num_tokens = 16, ratio = 0.75) image -> mask, visible
}
model m {
  preprocessor {
    patches: PatchEmbed(dim = 16, patch = 4) image -> x
    small:   PatchEmbed(dim = 8, patch = 4)  image -> y
  }
  trunk { BODY }
  head  { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
"""

POOL = "pool: AvgPool() x -> x"


def program(body: str, tail: str = POOL) -> str:
    return PROGRAM.replace("BODY", f"{body}\n  {tail}" if tail else body)


def _position(src: str, needle: str) -> tuple[int, int]:
    i = src.index(needle)
    line = src.count("\n", 0, i) + 1
    return line, i - (src.rfind("\n", 0, i) + 1) + 1


# name: (body, code, where the diagnostic points, words in its message)
LINT = {
    "add": ("sum: Add() x, y -> x", "E755", "Add()", ["do not broadcast", "8 and 16"]),
    "mul": ("prod: Mul() x, y -> x", "E755", "Mul()", ["do not broadcast"]),
    "concat axis out of range": ("cat: Concat(axis = 3) x, x -> x", "E755", "axis = 3", ["axis = 3", "3 dims"]),
    "concat other dims differ": ("cat: Concat(axis = 1) x, y -> x", "E755", "axis = 1", ["differ in dim 2"]),
    "split sizes": ("cut: Split(sizes = [1, 14], axis = 1) x -> a, x", "E755", "sizes = [1, 14]",
                    ["add up to 15", "dim 1", "16"]),
    "split nothing left": ("cut: Split(sizes = [16, -1], axis = 1) x -> a, x", "E755", "sizes", ["nothing for -1"]),
    "split extra output": ("cut: Split(sizes = [1, -1], axis = 1) x -> a, x, b", "E755", "sizes",
                           ["cut 2 parts", "3 outputs", "x0, x1"]),
    "split part dropped": ("cut: Split(sizes = [1, 1, -1], axis = 1) x -> a, x", "E755", "sizes",
                           ["cut 3 parts", "2 outputs"]),
    "split axis": ("cut: Split(sizes = [1, -1], axis = 5) x -> a, x", "E755", "axis = 5", ["outside the 3 dims"]),
    "reshape group": ("r: Reshape(pattern = \"B (H W) C -> B H W C\", H = 5) x -> x", "E755", "H = 5",
                      ["does not split", "H = 5"]),
    "reshape rank": ("r: Reshape(pattern = \"B N -> N B\") x -> x", "E755", "pattern", ["2 axes", "3 dims"]),
    "reshape pattern": ("r: Reshape(pattern = \"B N C -> B N\") x -> x", "E755", "pattern", ["both sides"]),
    "transpose": ("t: Transpose(dim0 = 1, dim1 = 3) x -> x", "E755", "dim1 = 3", ["dim1 = 3", "outside"]),
    "flatten": ("f: Flatten(start = 2, end = 1) x -> x", "E755", "end = 1", ["comes before start"]),
    "permute": ("p: Permute(dims = [0, 2]) x -> x", "E755", "dims = [0, 2]", ["not a permutation of the 3 dims"]),
    "activation dtype": ("a: Activation() label -> z", "E751", "label -> z", ["float", "long"]),
    "latents size": ("l: Latents(num = 0, dim = 16) x -> z", "E754", "num = 0", ["num (0)", "positive"]),
    "keep visible mask": ("k: KeepVisible(offset = 1) (x = x, mask = mask) -> x", "E755", "offset = 1",
                          ["covers 16 tokens", "after offset 1: 15"]),
    "keep visible ids": ("k: KeepVisible(offset = 1) x, visible -> x", "E755", "offset = 1",
                         ["indexes 16 tokens", "has 15 after offset 1"]),
    "keep visible dtype": ("k: KeepVisible() x, mask -> x", "E755", "KeepVisible()", ["holds bool"]),
    "keep visible unbound": ("k: KeepVisible() x -> x", "E755", "KeepVisible()", ["bind one"]),
    "insert dim": ("i: InsertMaskTokens(dim = 8) x, mask -> x", "E755", "dim = 8) x, mask", ["dim = 8", "float[B, 16, 16]"]),
    # a wrong size found downstream of a reshape: the symbolic dims travel
    "after flatten": ("f: Flatten() x -> x", "E750", "dim = 16, num_classes", ["256"]),
}


@pytest.mark.parametrize("case", sorted(LINT))
def test_lint_reports_wrong_axes_and_sizes(compile_text, case):
    body, code, needle, words = LINT[case]
    src = program(body, tail="" if case == "after flatten" else POOL)
    compiled = compile_text(src)
    hits = [d for d in compiled.diagnostics if d.code == code]
    assert hits, (case, [(d.code, d.message) for d in compiled.diagnostics])
    d = hits[0]
    for w in words:
        assert w in d.message, d.message
    assert (d.span.line, d.span.col) == _position(src, needle), (d.message, d.span)


def test_lint_propagates_symbolic_shapes(compile_text):
    body = """r:    Reshape(pattern = "B (H W) C -> B C H W", H = 4) x -> img
    f:    Flatten(start = 2) img -> flat
    t:    Transpose() flat -> t
    k:    KeepVisible() x, visible -> v
    i:    InsertMaskTokens(dim = 16) v, mask -> full
    lat:  Latents(num = 3, dim = 16) x -> z
    cut:  Split(sizes = [1, -1], axis = 1) full -> first, rest
    cat:  Concat() z, rest -> c
    sum:  Add() full, x -> x"""
    compiled = compile_text(program(body))
    assert compiled.ok, [(d.code, d.message) for d in compiled.errors]
    keys = ("img", "flat", "t", "v", "full", "z", "first", "rest", "c")
    shapes = {key: str(compiled.shapes.of(key)) for key in keys}
    assert shapes == {"img": "float[B, 16, 4, 4]", "flat": "float[B, 16, 16]", "t": "float[B, 16, 16]",
                      "v": "float[B, 4, 16]", "full": "float[B, 16, 16]", "z": "float[B, 3, 16]",
                      "first": "float[B, 1, 16]", "rest": "float[B, 15, 16]", "c": "float[B, 18, 16]"}


def test_the_blocks_build_and_run_in_a_program(compile_text):
    """Through the builder: Reshape's sizes reach the constructor, Split's unbound outputs are dropped."""
    from l3m.model.build import materialize

    body = """cut:  Split(sizes = [1, -1], axis = 1) x -> c, p
    grid: Reshape(pattern = "B (H W) C -> B C H W", H = 4) p -> g
    flat: Flatten(start = 2) g -> g
    t:    Transpose() g -> q
    act:  Activation(fn = silu) q -> q
    back: Concat() c, q -> y
    res:  Add() x, y -> x"""
    src = program(body).replace("patches: PatchEmbed(dim = 16, patch = 4) image -> x",
                                "patches: PatchEmbed(dim = 16, patch = 4) image -> x\n    cls: ClsToken(dim = 16) x -> x")
    compiled = compile_text(src.replace("    small:   PatchEmbed(dim = 8, patch = 4)  image -> y\n", ""))
    assert compiled.ok, [(d.code, d.message) for d in compiled.errors]
    assert str(compiled.shapes.of("y")) == "float[B, 17, 16]"
    model = materialize(compiled.build_model(), "cpu")
    image = torch.randn(2, 3, 16, 16)
    out = model({"image": image})
    assert out["logits"].shape == (2, 10)
    # the trunk by hand: the reshape, flatten and transpose undo each other, so y = [cls, silu(patches)]
    modules = dict(model.named_modules())
    x0 = modules["m.preprocessor.cls"](modules["m.preprocessor.patches"](image))
    want = (x0 + torch.cat([x0[:, :1], F.silu(x0[:, 1:])], dim=1)).mean(dim=1)
    assert torch.allclose(out["x"], want, atol=1e-6)

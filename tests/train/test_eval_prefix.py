"""AIM's evaluation uses full attention: RandomPrefixLength(eval_len = N) gives every evaluation
sample a prefix of N tokens, while training batches keep drawing random prefixes."""

from __future__ import annotations

import torch

from l3m.data.generators import FixedPrefixLength, RandomPrefixLength
from l3m.dsl import compile_file
from l3m.train.session import build_session, init_runtime, shutdown_runtime

PROGRAM = """l3m 1
data {
  train:  DigitsImages(split = train, image_size = 8, batch_size = 16) -> image, label
  eval:   DigitsImages(split = test, image_size = 8, batch_size = 16, shuffle = false) -> image, label
  prefix: RandomPrefixLength(low = 1, high = 3{eval_arg}) image -> prefix_len
}
model m {
  preprocessor {
    p:    PatchEmbed(dim = 16, patch = 4) image -> x
    mask: PrefixCausalMask() x, prefix_len -> mask
  }
  trunk { blocks: Transformer(dim = 16, depth = 1, heads = 2) (x = x, mask = mask) -> x }
  postprocessor { pool: AvgPool() x -> x }
  head { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW()
"""


def test_for_eval_forms():
    x = torch.zeros(5, 3)
    fixed = RandomPrefixLength(high=3, eval_len=16).for_eval()
    assert isinstance(fixed, FixedPrefixLength)
    assert fixed(x, rng=torch.Generator()).tolist() == [16] * 5
    plain = RandomPrefixLength(high=3)
    assert plain.for_eval() is plain  # no eval_len: evaluation draws as training does


def _batches(tmp_path, eval_arg: str):
    path = tmp_path / "aim.l3m"
    path.write_text(PROGRAM.replace("{eval_arg}", eval_arg))
    rt = init_runtime()
    session = build_session(compile_file(str(path)), rt)
    try:
        return next(iter(session.train_loader)), next(iter(session.eval_loaders["eval"].iter_epoch_once()))
    finally:
        session.close()
        shutdown_runtime(rt)


def test_eval_batches_get_the_full_prefix(tmp_path, run_env):
    train, ev = _batches(tmp_path, ", eval_len = 4")
    assert ev["prefix_len"].tolist() == [4] * 16  # 4 patches of 4x4 in an 8x8 image: full attention
    assert int(train["prefix_len"].min()) >= 1 and int(train["prefix_len"].max()) <= 3


def test_without_eval_len_eval_draws_randomly(tmp_path, run_env):
    _, ev = _batches(tmp_path, "")
    assert int(ev["prefix_len"].max()) <= 3


def test_a_whole_sequence_prefix_is_full_attention():
    from l3m.model.blocks.masks import PrefixCausalMask

    mask = PrefixCausalMask()(torch.zeros(2, 6, 4), torch.tensor([6, 2]))
    assert bool(mask[0].all())  # every query sees every key
    assert not bool(mask[1].all())  # a shorter prefix stays causal after it

"""Byte caption tokenisation and the data that ships with the install."""

import torch

from l3m.data import embedded
from l3m.data.tokens import (
    BOS_ID,
    BYTE_OFFSET,
    EOS_ID,
    PAD_ID,
    caption_length,
    decode_caption,
    encode_caption,
    encode_captions,
    eos_index,
)


def test_caption_layout_and_round_trip():
    ids = encode_caption("hi", 6)
    assert ids.tolist() == [BOS_ID, ord("h") + BYTE_OFFSET, ord("i") + BYTE_OFFSET, EOS_ID, PAD_ID, PAD_ID]
    assert decode_caption(encode_caption("a photo of the digit seven", 40)) == "a photo of the digit seven"
    assert caption_length("hi") == 4


def test_truncated_caption_keeps_eos():
    ids = encode_caption("abcdefghij", 5)
    assert ids.tolist()[0] == BOS_ID and ids.tolist()[-1] == EOS_ID
    assert decode_caption(ids) == "abc"
    batch = encode_captions(["a", "abcd"], 8)
    assert batch.shape == (2, 8) and eos_index(batch).tolist() == [2, 5]


def test_digits_split_is_disjoint_deterministic_and_complete():
    train = embedded.digits_split("train", 0.8, seed=3)
    test = embedded.digits_split("test", 0.8, seed=3)
    assert len(train) == round(1797 * 0.8) and len(train) + len(test) == 1797
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.equal(train, embedded.digits_split("train", 0.8, seed=3))
    assert not torch.equal(train, embedded.digits_split("train", 0.8, seed=4))


def test_digits_arrays_and_prompts():
    images, labels = embedded.digits()
    assert images.shape == (1797, 8, 8) and images.min() >= 0.0 and images.max() <= 1.0
    assert sorted(set(labels.tolist())) == list(range(10))
    prompts = embedded.digit_prompts()
    assert len(prompts) == 10 and prompts[7] == "a photo of the digit seven"
    assert embedded.digit_prompts("{}!")[0] == "zero!"


def test_stdlib_files_are_sorted_stdlib_python():
    files = embedded.stdlib_files()
    root = embedded.stdlib_root()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert len(files) > 100 and rel == sorted(rel)
    assert all(r.endswith(".py") and "site-packages" not in r for r in rel)
    assert "os.py" in rel

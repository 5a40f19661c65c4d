"""Evaluation sees the data as it is: train-only augmentations (mixup/cutmix) are skipped."""

from __future__ import annotations

from l3m.dsl import compile_file
from l3m.train.session import build_session, init_runtime, shutdown_runtime

PROGRAM = """l3m 1
data {
  train: DigitsImages(split = train, image_size = 8, batch_size = 8) -> image, label
  eval:  DigitsImages(split = test, image_size = 8, batch_size = 8, shuffle = false) -> image, label
  mix:   MixupCutmix(num_classes = 10) image, label -> image, label
}
model m {
  preprocessor { p: PatchEmbed(dim = 16, patch = 4) image -> x }
  postprocessor { pool: AvgPool() x -> x }
  head { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss ce: ClassificationCE() logits, label -> loss
optimizer AdamW()
"""


def test_mixup_shapes_training_batches_only(tmp_path, run_env):
    path = tmp_path / "mix.l3m"
    path.write_text(PROGRAM)
    rt = init_runtime()
    session = build_session(compile_file(str(path)), rt)
    try:
        train_batch = next(iter(session.train_loader))
        eval_batch = next(iter(session.eval_loaders["eval"].iter_epoch_once()))
        assert train_batch["label"].shape == (8, 10)  # soft, mixed labels
        assert eval_batch["label"].shape == (8,)  # the held-out labels as they are
    finally:
        session.close()
        shutdown_runtime(rt)

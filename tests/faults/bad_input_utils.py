"""A tiny image classifier on synthetic data (no files), and `l3m` run in-process through its `main()`."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

PROGRAM = """l3m 1
data {
  train: Synthetic(kind = image, image_size = 8, num_classes = CLASSES, batch_size = 4, length = 32) -> image, label
}
model m {
  preprocessor  { patches: PatchEmbed(dim = 16, patch = 4) image -> x }
  trunk         { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  postprocessor { pool: AvgPool() x -> x }
  head          { fc: Classifier(dim = 16, num_classes = 10) x -> logits }
}
loss   ce:   ClassificationCE()  logits, label -> loss
metric top1: TopKAccuracy(k = 1) logits, label -> top1
optimizer AdamW(lr = 1e-3)
train { steps = 2, log_every = 1 }
log { wandb = disabled, console = plain }
"""


def program(tmp_path: Path, *edits: tuple[str, str], classes: int = 10, name: str = "prog.l3m") -> Path:
    """The program with `(old, new)` text replacements applied (each must apply)."""
    text = PROGRAM.replace("CLASSES", str(classes))
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


# A block that declares no shapes: lint cannot follow what flows through it, so a mistake after it is found
# when the step runs (the run-time reports that declared shapes otherwise make lint errors).
OPAQUE_EXT = '''from torch import nn

from l3m import register


@register("block")
class Opaque(nn.Module):
    outputs = ("x",)

    def forward(self, x):
        return x
'''


def with_opaque(tmp_path: Path, *edits: tuple[str, str], classes: int = 10,
                monkeypatch: pytest.MonkeyPatch | None = None) -> Path:
    """`program(...)` that may use the undeclared block `Opaque()`, from a module written to tmp_path (which
    must be on sys.path / PYTHONPATH when the program is built) and named after it, so that no other test
    finds it imported already. Give `monkeypatch` when the program runs in this process: the registry is
    restored afterwards, so `Opaque` does not stay registered for other tests."""
    if monkeypatch is not None:
        from l3m import registry

        registry.load_builtins()  # as the run will: the copy then holds every built-in
        monkeypatch.setattr(registry, "_REGISTRY", {k: dict(v) for k, v in registry._REGISTRY.items()})
        monkeypatch.setattr(registry, "_view", None)
        monkeypatch.syspath_prepend(str(tmp_path))
    module = f"opaqueext_{zlib.crc32(str(tmp_path).encode()):08x}"
    (tmp_path / f"{module}.py").write_text(OPAQUE_EXT)
    return program(tmp_path, ("l3m 1\n", f'l3m 1\nextension "{module}"\n'), *edits, classes=classes)


def make_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture):
    """`cli(*args) -> (exit code, stdout, stderr)` of `l3m.cli.main`, on the CPU, in `tmp_path`."""
    from l3m.cli import main

    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")
    monkeypatch.delenv("L3M_FAULT", raising=False)
    monkeypatch.delenv("L3M_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def no_internal_error(err: str) -> None:
    assert "Traceback" not in err, err
    assert "internal error" not in err, err

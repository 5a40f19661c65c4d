"""Shared fixtures: compile `.l3m` text written to a temporary file."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def compile_text(tmp_path):
    from l3m.dsl import compile_file

    def run(text: str, overrides=(), name: str = "prog.l3m", world_size=None, **files: str):
        for fname, body in files.items():
            p = tmp_path / fname.replace("__", "/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(body)
        path = tmp_path / name
        path.write_text(text)
        return compile_file(str(path), overrides, world_size=world_size)

    return run

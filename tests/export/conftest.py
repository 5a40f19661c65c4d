"""Fixtures of the export tests: a quiet CPU environment in a temporary directory, and a umask of
0o022 so that "an ordinary file's mode" is 0o644."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def quiet_run(run_env, tmp_path):
    old = os.umask(0o022)
    yield tmp_path
    os.umask(old)


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture
def timm():
    return pytest.importorskip("timm")

"""Data: registered sources (`sources`), per-batch generators (`generators`), image pipelines
(`transforms`), byte tokenisation (`tokens`), the data that ships with the install
(`embedded`), and the resumable, sharded loader that ties them together (`loader`). Bad samples
raise `DataError` (`errors`), which the loader raises or skips (`data { on_error = skip }`)."""

from __future__ import annotations

from typing import Any

from l3m.data.errors import DataError

_LOADER = ("VALID_KEY", "StatefulLoader", "build_loader")


def __getattr__(name: str) -> Any:
    """The loader (torch) is imported on first use, so that `l3m lint` can read tokenizers and
    manifests under `l3m.data` without it."""
    if name in _LOADER:
        from l3m.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'l3m.data' has no attribute {name!r}")


__all__ = ["VALID_KEY", "DataError", "StatefulLoader", "build_loader"]

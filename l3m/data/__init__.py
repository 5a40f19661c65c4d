"""Data: registered sources (`sources`), per-batch generators (`generators`), image pipelines
(`transforms`), byte tokenisation (`tokens`), the data that ships with the install
(`embedded`), and the resumable, sharded loader that ties them together (`loader`). Bad samples
raise `DataError` (`errors`), which the loader raises or skips (`data { on_error = skip }`)."""

from l3m.data.errors import DataError
from l3m.data.loader import VALID_KEY, StatefulLoader, build_loader

__all__ = ["VALID_KEY", "DataError", "StatefulLoader", "build_loader"]

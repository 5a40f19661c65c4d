"""Data: registered sources (`sources`), per-batch generators (`generators`), image pipelines
(`transforms`), byte tokenisation (`tokens`), the data that ships with the install
(`embedded`), and the resumable, sharded loader that ties them together (`loader`)."""

from l3m.data.loader import VALID_KEY, StatefulLoader, build_loader

__all__ = ["VALID_KEY", "StatefulLoader", "build_loader"]

"""The shape table: what lint knows about every version of every key, and who wrote it."""

from __future__ import annotations

from dataclasses import dataclass

from l3m.dsl.shapes.spec import TensorType


@dataclass(frozen=True, slots=True)
class KeyShape:
    key: str
    version: int
    writers: tuple[str, ...]  # node paths (several data sources write version 0 of the same key)
    type: TensorType


class ShapeTable:
    """`(key, version) -> TensorType`, versions as in the dataflow graph (`l3m.dsl.schedule`)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], KeyShape] = {}

    def set(self, key: str, version: int, writers: tuple[str, ...], t: TensorType) -> None:
        self._rows[(key, version)] = KeyShape(key, version, writers, t)

    def row(self, key_version) -> KeyShape | None:
        """A row by `(key, version)`, the graph's `("key", key, version)`, or a key name (its last version)."""
        if isinstance(key_version, str):
            versions = [v for (k, v) in self._rows if k == key_version]
            return self._rows[(key_version, max(versions))] if versions else None
        if len(key_version) == 3:
            key_version = key_version[1:]
        return self._rows.get(tuple(key_version))

    def of(self, key_version) -> TensorType | None:
        """The type of a key version; None when nothing is known about it."""
        r = self.row(key_version)
        return r.type if r is not None and r.type.known else None

    def writers(self, key_version) -> tuple[str, ...]:
        r = self.row(key_version)
        return r.writers if r is not None else ()

    def rows(self) -> list[KeyShape]:
        """Every key version, in the order they were written."""
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

"""The one error type of the suites: bad input the user can fix (printed as one line, exit 2)."""

from __future__ import annotations


class EvalInputError(ValueError):
    """A missing or malformed file, a flag a suite needs, a model the suite cannot read."""

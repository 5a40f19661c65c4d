"""Whether text for a stream may carry colour and cursor codes (torch-free, imported by the CLI).

Only a terminal gets them: a pipe or a file gets plain text. `NO_COLOR` (any non-empty value,
https://no-color.org) and `TERM=dumb` turn them off on a terminal too.
"""

from __future__ import annotations

import os
from typing import Any


def color_enabled(stream: Any) -> bool:
    """Colour (and live progress bars) on `stream`."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False

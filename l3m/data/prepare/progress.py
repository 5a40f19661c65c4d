"""Progress of a prepare: a live bar on a terminal (rich), plain lines every 10% otherwise.

Plain lines carry no escape codes, so logs of batch jobs stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts input bytes done (and tokens written) against the corpus size."""

    def __init__(self, total_bytes: int, enabled: bool = True, stream=None) -> None:
        self.total, self.done, self.tokens = max(total_bytes, 1), 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()
        self._tenths = 0  # plain lines: the last tenth of the corpus reported
        self._bar = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("tokenizing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                     TextColumn("{task.fields[tokens]:,} tokens"), TimeRemainingColumn(),
                                     console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task("prepare", total=self.total, tokens=0)
            self._bar.start()

    def advance(self, nbytes: int, tokens: int) -> None:
        self.done += nbytes
        self.tokens += tokens
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, tokens=self.tokens)
            return
        tenth = self.done * 10 // self.total
        if tenth > self._tenths and nbytes:
            self._tenths = tenth
            secs = time.perf_counter() - self.start
            print(f"l3m data prepare: {self.done / self.total:4.0%} of {self.total / 1e6:,.1f} MB, "
                  f"{self.tokens:,} tokens ({secs:.0f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

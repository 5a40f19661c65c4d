"""Reading source files: regular `.l3m` files of bounded size, and nothing else.

`import "/etc/shadow"` must not print the shadow file's first line in a syntax error, and
`import "/dev/zero"` or a named pipe must not hang or fill memory. So a file is refused, before its
contents are read, unless its name (and, through symlinks, its target's) ends in `.l3m` and `stat`
says it is a regular file within the size limit; it is then opened without blocking and read with
a bounded read. Refusals never quote the file's contents.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
from collections.abc import Iterator, Mapping

from l3m.dsl.limits import MAX_FILE_BYTES, SOURCE_SUFFIX

_MIB = MAX_FILE_BYTES // (1024 * 1024)


class SourceRefused(ValueError):
    """A file the front end will not read. `kind`: suffix, special, size or text."""

    def __init__(self, path: str, kind: str, reason: str):
        super().__init__(f"'{path}' {reason}")
        self.path, self.kind, self.reason = path, kind, reason


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _check_stat(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SourceRefused(path, "special", f"is {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise SourceRefused(path, "size", f"is {st.st_size} bytes; .l3m files are limited to {_MIB} MiB")


# Texts that stand in for files (by real path): an editor's unsaved buffers, compiled by `l3m lsp`
# without writing them anywhere. A context variable, so each thread or task sees only its own.
_OVERLAY: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("l3m_source_overlay",
                                                                                   default=None)


@contextlib.contextmanager
def source_overlay(texts: Mapping[str, str]) -> Iterator[None]:
    """Within the block, `read_source` answers these texts (keyed by path) instead of reading the files;
    the suffix, size and text rules still apply to them."""
    token = _OVERLAY.set({os.path.realpath(p): t for p, t in texts.items()})
    try:
        yield
    finally:
        _OVERLAY.reset(token)


def _overlaid(path: str, text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > MAX_FILE_BYTES:
        raise SourceRefused(path, "size", f"is {len(data)} bytes; .l3m files are limited to {_MIB} MiB")
    if "\0" in text:
        raise SourceRefused(path, "text", "is not a text file (it contains NUL bytes)")
    return text


def read_source(path: str) -> str:
    """The text of a `.l3m` file. Raises SourceRefused, or OSError when the file cannot be opened."""
    if not path.endswith(SOURCE_SUFFIX):
        raise SourceRefused(path, "suffix", f"is not a {SOURCE_SUFFIX} file")
    real = os.path.realpath(path)
    if not real.endswith(SOURCE_SUFFIX):
        raise SourceRefused(path, "suffix", f"links to '{real}', which is not a {SOURCE_SUFFIX} file")
    overlay = _OVERLAY.get()
    if overlay and real in overlay:
        return _overlaid(path, overlay[real])
    _check_stat(path, os.stat(path))  # before opening: opening a FIFO for reading would block
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_stat(path, os.fstat(fd))  # the file opened is the file checked
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(MAX_FILE_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew since stat
        raise SourceRefused(path, "size", f"is larger than {_MIB} MiB; .l3m files are limited to {_MIB} MiB")
    if b"\0" in data:
        raise SourceRefused(path, "text", "is not a text file (it contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceRefused(path, "text", f"is not UTF-8 text (invalid byte at offset {e.start})") from None

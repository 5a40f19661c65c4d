"""One open document: its text, its compiled program (the same as `l3m lint` would give for that text)
and, on demand, its syntax tree and an index of what stands where.

Compiling reads the editor's unsaved buffers instead of the files on disk (`source_overlay`), so a
document and the open files it imports are checked as they are on screen, and nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field

from l3m.dsl import Compiled, compile_file
from l3m.dsl import ast as a
from l3m.dsl.ir import Program
from l3m.dsl.limits import MAX_FILE_BYTES
from l3m.dsl.parser import ParseFailure, parse
from l3m.dsl.source import source_overlay
from l3m.lsp.incremental import IncrementalParser
from l3m.lsp.index import Occurrence, find, occurrences
from l3m.lsp.positions import Pos, same_file
from l3m.lsp.resolve_memo import ResolveMemo

_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')


def _meaningful(text: str) -> str:
    """The text without comments and trailing white space: what the lexer sees, at the same positions."""
    stripped = _COMMENT_OR_STRING.sub(lambda m: m.group() if m.group()[0] == '"' else "", text)
    return "\n".join(line.rstrip() for line in stripped.split("\n")).rstrip("\n")


def compile_text(path: str, text: str, others: dict[str, str] | None = None,
                 parser: IncrementalParser | None = None, memo: ResolveMemo | None = None) -> Compiled:
    """Compile `text` as the file `path` (which need not exist); `others`: unsaved texts of other files;
    `parser`: parse incrementally, reusing the unchanged pieces of its last parse; `memo`: replay the node
    calls of the last compile that nothing changed (both give the same result as without them)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(source_overlay({**(others or {}), path: text}))
        if parser is not None:
            stack.enter_context(parser.active())
        if memo is not None:
            stack.enter_context(memo.active(parser.moved if parser is not None else None))
        return compile_file(path)


@dataclass
class Document:
    uri: str
    path: str
    text: str
    version: int | None = None
    compiled: Compiled | None = None  # of `compiled_text`, which may lag `text` while the user types
    compiled_text: str | None = None
    last_program: Program | None = None  # of the last text that compiled at all: completion's names while typing
    _module: a.Module | None = field(default=None, repr=False)
    _module_text: str | None = field(default=None, repr=False)
    _occ: list[Occurrence] | None = field(default=None, repr=False)
    _others: dict[str, str] | None = field(default=None, repr=False)  # the other buffers of the last compile
    parser: IncrementalParser = field(default_factory=IncrementalParser, repr=False)  # its pieces, and imports'
    memo: ResolveMemo = field(default_factory=ResolveMemo, repr=False)  # its node calls

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    def compile(self, others: dict[str, str] | None = None, force: bool = False) -> Compiled:
        """Compile the text on screen. An edit that only touched comments or trailing white space moves no
        token, so the last result stands for the new text as it is (unless `force`: a file it imports
        changed, or the other buffers did)."""
        text = self.text
        others = dict(others or {})
        if not force and self._same_tokens(text, others):
            self.compiled_text = text
            return self.compiled
        compiled = compile_text(self.path, text, others, self.parser, self.memo)
        self.compiled, self.compiled_text, self._others = compiled, text, others
        if compiled.program is not None:
            self.last_program = compiled.program
        return compiled

    def _same_tokens(self, text: str, others: dict[str, str]) -> bool:
        old = self.compiled_text
        if self.compiled is None or self.compiled.program is None or old is None or others != self._others:
            return False
        if "\0" in text or len(text) * 4 > MAX_FILE_BYTES:  # what the reader refuses must be refused again
            return False
        return _meaningful(old) == _meaningful(text)

    def module(self) -> a.Module | None:
        """The syntax tree of the current text; None while it does not parse."""
        if self._module_text != self.text:
            self._module_text = self.text
            self._occ = None
            try:
                with self.parser.active():
                    self._module = parse(self.text, self.display_name())
            except ParseFailure:
                self._module = None
        return self._module

    def occurrences(self) -> list[Occurrence]:
        mod = self.module()
        if mod is None:
            return []
        if self._occ is None:
            self._occ = occurrences(mod)
        return self._occ

    def at(self, pos: Pos) -> Occurrence | None:
        return find(self.occurrences(), pos)

    def display_name(self) -> str:
        """The name the compiler gives this file in spans (relative to the working directory when below it)."""
        if self.compiled is not None and self.compiled.program is not None:
            return self.compiled.program.file
        rel = os.path.relpath(self.path)
        return self.path if rel.startswith("..") else rel

    def is_this(self, file: str) -> bool:
        return same_file(file, self.path)

    def fresh(self) -> bool:
        """Whether the compiled program is of the text on screen (its spans line up)."""
        return self.compiled is not None and self.compiled_text == self.text

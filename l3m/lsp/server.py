"""The server's wiring: pygls features -> the analysis modules, and diagnostics as you type.

Every compile and every request that reads a syntax tree runs on one worker thread, in arrival order:
the front end is not meant to run twice at once, and a request never sees a half-built analysis.
An edit after a pause is compiled at once; edits that follow it within `L3M_LSP_DEBOUNCE_MS` (default
10 ms) are debounced, so a burst compiles once, and a document is never compiled twice at once: edits
made during a compile start one more when it ends, of the text then on screen. The parse is incremental
(`l3m.lsp.incremental`: an edit re-parses the piece of the file it touched), and node calls that nothing
changed are replayed, not resolved again (`l3m.lsp.resolve_memo`): the diagnostics are a full compile's.
Diagnostics are published only for the text on screen (a result overtaken by a newer edit is dropped;
its successor is queued). An edit that touches only comments or trailing
white space reuses the last result (see `Document.compile`). Editing, saving or changing a file on disk
re-checks the open files that import it.

The cyclic garbage collector is off in the server and runs when the user pauses (`IDLE_GC_S`), not
between an edit and its diagnostics: a collection over the front end's objects takes about 20 ms, and
the front end frees almost nothing through it (its objects are freed by reference counting).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lsprotocol import types as t
from pygls.lsp.server import LanguageServer

from l3m.lsp.completion import complete
from l3m.lsp.definition import definition
from l3m.lsp.diagnostics import to_lsp
from l3m.lsp.documents import Document, compile_text
from l3m.lsp.formatting import format_document
from l3m.lsp.hover import hover
from l3m.lsp.incremental import IncrementalParser
from l3m.lsp.positions import from_client, same_file, uri_to_path
from l3m.lsp.symbols import document_symbols

log = logging.getLogger("l3m.lsp")
DEBOUNCE_S = float(os.environ.get("L3M_LSP_DEBOUNCE_MS", "10")) / 1000
COMPLETION_TRIGGERS = ["(", ",", ":", "=", ">"]  # after `Type(`, `a, `, `name:`, `x =`, `->`
IDLE_GC_S = 0.25  # collect cyclic garbage once the server has been idle this long
GC_EVERY = 25  # ... or after this many compiles without such a pause


class L3mServer(LanguageServer):
    def __init__(self) -> None:
        from l3m import __version__

        super().__init__("l3m", __version__, text_document_sync_kind=t.TextDocumentSyncKind.Incremental)
        self.docs: dict[str, Document] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.running: set[str] = set()  # documents being compiled now
        self.again: set[str] = set()  # ... that changed meanwhile
        self.forced: set[str] = set()  # documents whose imports changed: compile even if their tokens did not
        self.last_edit: dict[str, float] = {}  # when each document last changed (the event loop's clock)
        self.gc_timer: asyncio.TimerHandle | None = None
        self.since_gc = 0  # compiles since the last collection
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l3m-analysis")

    # ------------------------------------------------------------------ helpers
    @property
    def encoding(self) -> str:
        enc = self.workspace.position_encoding
        return str(getattr(enc, "value", enc) or "utf-16")

    def on_worker(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def others(self, doc: Document) -> dict[str, str]:
        """The unsaved texts of the other open documents, read instead of their files when imported."""
        return {d.path: d.text for d in self.docs.values() if d is not doc}

    def position(self, doc: Document, p: t.Position):
        return from_client(doc.lines, p.line, p.character, self.encoding)

    # ------------------------------------------------------------------ diagnostics
    def schedule(self, uri: str, delay: float = DEBOUNCE_S, force: bool = False) -> None:
        """Check `uri` after `delay`; `force`: compile even if only comments changed (its imports did)."""
        if force:
            self.forced.add(uri)
        loop = asyncio.get_running_loop()
        old = self.timers.pop(uri, None)
        if old is not None:
            old.cancel()
        self.timers[uri] = loop.call_later(delay, lambda: asyncio.ensure_future(self.check(uri)))

    def collect_later(self) -> None:
        """Garbage collection when idle (see the module's docstring), or now after `GC_EVERY` compiles."""
        self.since_gc += 1
        if self.gc_timer is not None:
            self.gc_timer.cancel()
        self.gc_timer = None
        if self.since_gc >= GC_EVERY:
            self.collect(force=True)
        else:
            self.gc_timer = asyncio.get_running_loop().call_later(IDLE_GC_S, self.collect)

    def collect(self, force: bool = False) -> None:
        self.gc_timer = None
        if not force and (self.running or self.timers):  # busy: wait for the next pause
            self.gc_timer = asyncio.get_running_loop().call_later(IDLE_GC_S, self.collect)
            return
        self.since_gc = 0
        gc.collect()

    def schedule_dependents(self, doc: Document) -> None:
        for other in list(self.docs.values()):
            prog = other.compiled.program if other is not doc and other.compiled is not None else None
            if prog is not None and any(same_file(i, doc.path) for i in prog.imports):
                self.schedule(other.uri, force=True)

    async def check(self, uri: str) -> None:
        self.timers.pop(uri, None)
        doc = self.docs.get(uri)
        if doc is None:
            return
        if uri in self.running:  # one compile per document at a time; the next one starts when it ends
            self.again.add(uri)
            return
        self.running.add(uri)
        try:
            started = time.perf_counter()
            force = uri in self.forced
            self.forced.discard(uri)
            await self.on_worker(doc.compile, self.others(doc), force)
            log.debug("compiled %s in %.1f ms", doc.path, 1000 * (time.perf_counter() - started))
        except Exception as e:  # a bug in the front end: say so in the editor's log, keep serving
            log.exception("compiling %s failed", doc.path)
            self.window_log_message(t.LogMessageParams(t.MessageType.Error, f"l3m: compiling {doc.path} failed: {e}"))
            return
        finally:
            self.running.discard(uri)
            if uri in self.again:
                self.again.discard(uri)
                self.schedule(uri, 0, force=uri in self.forced)
        if self.docs.get(uri) is not doc or doc.compiled_text != doc.text:
            self.collect_later()
            return  # overtaken by an edit: its own check is queued
        self.text_document_publish_diagnostics(
            t.PublishDiagnosticsParams(uri=uri, diagnostics=to_lsp(doc, self.encoding), version=doc.version))
        self.collect_later()

    def changed(self, uri: str, text: str, version: int | None, delay: float = DEBOUNCE_S) -> None:
        doc = self.docs.get(uri)
        if doc is None:
            doc = self.docs[uri] = Document(uri, uri_to_path(uri), text, version)
        doc.text, doc.version = text, version
        now = asyncio.get_running_loop().time()
        if now - self.last_edit.get(uri, float("-inf")) > DEBOUNCE_S:  # the first edit after a pause: at once
            delay = 0
        self.last_edit[uri] = now
        self.schedule(uri, delay)
        self.schedule_dependents(doc)


def _warm_up() -> None:
    try:
        compile_text(os.path.abspath("__l3m_lsp_warmup__.l3m"), "l3m 1\n", parser=IncrementalParser())
    except Exception:  # only a warm-up: the real compile reports whatever this hit
        log.exception("warm-up compile failed")
    gc.collect()
    gc.freeze()  # the modules and tables loaded so far live as long as the server: never scanned again


def build_server() -> L3mServer:
    server = L3mServer()

    @server.feature(t.INITIALIZED)
    async def initialized(ls: L3mServer, params: t.InitializedParams) -> None:
        """Warm up while the editor opens its first file: the front end's imports and parser tables load
        on the first compile, so compile a one-line program (in memory, nothing is written)."""
        ls.on_worker(_warm_up)

    @server.feature(t.TEXT_DOCUMENT_DID_OPEN)
    async def did_open(ls: L3mServer, params: t.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        ls.changed(td.uri, td.text, td.version, delay=0)

    @server.feature(t.TEXT_DOCUMENT_DID_CHANGE)
    async def did_change(ls: L3mServer, params: t.DidChangeTextDocumentParams) -> None:
        td = ls.workspace.get_text_document(params.text_document.uri)
        ls.changed(td.uri, td.source, params.text_document.version)

    @server.feature(t.TEXT_DOCUMENT_DID_SAVE)
    async def did_save(ls: L3mServer, params: t.DidSaveTextDocumentParams) -> None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is not None:  # files that are not open but import this one now read the saved text
            ls.schedule(doc.uri, 0, force=True)
            ls.schedule_dependents(doc)

    @server.feature(t.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    async def files_changed(ls: L3mServer, params: t.DidChangeWatchedFilesParams) -> None:
        """A `.l3m` file changed on disk (another program, a git checkout): re-check the open files importing it."""
        for change in params.changes:
            path = uri_to_path(change.uri)
            for doc in list(ls.docs.values()):
                prog = doc.compiled.program if doc.compiled is not None else None
                if prog is not None and any(same_file(i, path) for i in prog.imports):
                    ls.schedule(doc.uri, force=True)

    @server.feature(t.TEXT_DOCUMENT_DID_CLOSE)
    async def did_close(ls: L3mServer, params: t.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.docs.pop(uri, None)
        ls.last_edit.pop(uri, None)
        timer = ls.timers.pop(uri, None)
        if timer is not None:
            timer.cancel()
        ls.text_document_publish_diagnostics(t.PublishDiagnosticsParams(uri=uri, diagnostics=[]))

    @server.feature(t.TEXT_DOCUMENT_HOVER)
    async def on_hover(ls: L3mServer, params: t.HoverParams) -> t.Hover | None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is None:
            return None
        return await ls.on_worker(hover, doc, ls.position(doc, params.position), ls.encoding, ls.others(doc))

    @server.feature(t.TEXT_DOCUMENT_DEFINITION)
    async def on_definition(ls: L3mServer, params: t.DefinitionParams) -> t.Location | None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is None:
            return None
        return await ls.on_worker(definition, doc, ls.position(doc, params.position), ls.others(doc), ls.encoding)

    @server.feature(t.TEXT_DOCUMENT_COMPLETION, t.CompletionOptions(trigger_characters=COMPLETION_TRIGGERS))
    async def on_completion(ls: L3mServer, params: t.CompletionParams) -> t.CompletionList | None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is None:
            return None
        return await ls.on_worker(complete, doc, ls.position(doc, params.position))

    @server.feature(t.TEXT_DOCUMENT_FORMATTING)
    async def on_formatting(ls: L3mServer, params: t.DocumentFormattingParams) -> list[t.TextEdit] | None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is None:
            return None
        return await ls.on_worker(format_document, doc)

    @server.feature(t.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    async def on_symbols(ls: L3mServer, params: t.DocumentSymbolParams) -> list[t.DocumentSymbol] | None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is None:
            return None
        return await ls.on_worker(document_symbols, doc, ls.encoding)

    return server


def serve() -> None:
    """Serve on stdin/stdout (what editors start: `l3m lsp`)."""
    if os.environ.get("L3M_LSP_LOG"):
        logging.basicConfig(filename=os.environ["L3M_LSP_LOG"], level=logging.DEBUG)
    gc.disable()  # collected when idle (`L3mServer.collect`)
    build_server().start_io()

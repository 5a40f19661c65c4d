"""A minimal LSP client for the tests: starts `l3m lsp` as a real process and speaks JSON-RPC over its
stdin/stdout (Content-Length framing), as an editor does."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


class LspClient:
    def __init__(self, cwd: Path, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-c", "import sys; from l3m.cli import main; sys.exit(main(['lsp']))"]
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        self.messages: queue.Queue = queue.Queue()
        self.notifications: list[dict] = []
        self.published: list[dict] = []
        self.responses: dict[int, dict] = {}
        self.next_id = 0
        self.lock = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    # ------------------------------------------------------------------ transport
    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    with self.lock:
                        self.lock.notify_all()
                    return
                line = line.decode("ascii").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = out.read(int(headers["content-length"]))
            msg = json.loads(body)
            with self.lock:
                if "id" in msg and "method" not in msg:
                    self.responses[msg["id"]] = msg
                elif "method" in msg and "id" in msg:  # a request from the server (e.g. registerCapability)
                    self._send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
                else:
                    self.notifications.append(msg)
                    if msg.get("method") == "textDocument/publishDiagnostics":
                        self.published.append(msg["params"])  # every one, never consumed
                self.lock.notify_all()

    def _send(self, msg: dict) -> None:
        data = json.dumps(msg).encode("utf-8")
        self.proc.stdin.write(f"Content-Length: {len(data)}\r\n\r\n".encode("ascii") + data)
        self.proc.stdin.flush()

    # ------------------------------------------------------------------ JSON-RPC
    def notify(self, method: str, params: Any = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: Any = None, timeout: float = 60) -> Any:
        with self.lock:
            self.next_id += 1
            rid = self.next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        with self.lock:
            while rid not in self.responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no answer to {method}: {self.stderr_tail()}")
                self.lock.wait(left)
            msg = self.responses.pop(rid)
        if "error" in msg:
            raise RuntimeError(f"{method} failed: {msg['error']}")
        return msg.get("result")

    def wait_diagnostics(self, uri: str, version: int | None = None, timeout: float = 60) -> list[dict]:
        """The next diagnostics published for `uri` (of `version`, when given), consumed."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for i, m in enumerate(self.notifications):
                    p = m.get("params") or {}
                    if m.get("method") == "textDocument/publishDiagnostics" and p.get("uri") == uri and \
                            (version is None or p.get("version") == version):
                        del self.notifications[: i + 1]
                        return p["diagnostics"]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no diagnostics for {uri}: {self.stderr_tail()}")
                self.lock.wait(left)

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(server still running)"
        return self.proc.stderr.read().decode("utf-8", "replace")[-2000:]

    # ------------------------------------------------------------------ LSP
    def initialize(self, root: Path) -> dict:
        result = self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(),
                                             "capabilities": {"textDocument": {"hover": {"contentFormat": ["markdown"]},
                                                                               "documentSymbol": {"hierarchicalDocumentSymbolSupport": True}}}})
        self.notify("initialized", {})
        return result

    def open(self, path: Path, text: str, version: int = 1) -> str:
        uri = path.as_uri()
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "l3m", "version": version,
                                                              "text": text}})
        return uri

    def change(self, uri: str, version: int, text: str, range_: dict | None = None) -> None:
        change = {"text": text} if range_ is None else {"range": range_, "text": text}
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [change]})

    def at(self, method: str, uri: str, line: int, character: int) -> Any:
        return self.request(method, {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})

    def close(self) -> int:
        """shutdown + exit; the server's exit code."""
        if self.proc.poll() is None:
            self.request("shutdown")
            self.notify("exit")
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return -9
        return self.proc.returncode

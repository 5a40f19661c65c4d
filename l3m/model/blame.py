"""Failures inside the user's blocks, losses, metrics and sources, reported as the user's mistakes.

A node that raises while it is built or run (a `Linear` whose `in_features` disagree with the
block before it, a label past the head's classes, a tie to nothing) is a mistake in the program,
not in l3m. Such an error becomes a `ProgramError` carrying a compiler-style `Diagnostic` at the
node's `file:line:col`, naming it and its type, which the commands print like any other.

Building: the builders know which node they are calling and raise `BlockFailure` themselves.
Running: attribution happens after the fact, from the traceback, so nothing is paid while nothing
fails: the MetaModel's generated forward has one source line per block (the line number of its
frame names the block; under torch.compile the tracer's message names that line), and the
Criterion's frame holds the name of the loss or metric it ran.
"""

from __future__ import annotations

import contextlib
import os
import re
import sysconfig
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

import torch

from l3m.dsl.diagnostics import Diagnostic
from l3m.dsl.ir import Node, Program, Span

BLOCK_FAILED = "E901"
LABEL_RANGE = "E902"
GLOB_CODE = "E640"
ROLE_WORDS = {"source": "data source", "generator": "generator", "block": "block", "loss": "loss", "metric": "metric"}
_GENERATED = re.compile(r'File "<l3m MetaModel \d+>", line (\d+)')


class ProgramError(ValueError):
    """A mistake in the program found while building or running it, with its diagnostic."""

    def __init__(self, diagnostic: Diagnostic, text: str | None = None) -> None:
        self.diagnostic = diagnostic
        where = f"{diagnostic.span}: " if diagnostic.span else ""
        super().__init__(text if text is not None else where + diagnostic.message)


def describe(node: Node) -> str:
    """`block 'proj' (Linear)`: how a diagnostic names a node."""
    return f"{ROLE_WORDS.get(node.role, node.role)} '{node.name}' ({node.call.type_name})"


def error_text(error: BaseException) -> str:
    """The exception's message as a user reads it: its first lines, with the type when it tells something.
    An error of torch.compile's tracer stands for the one it met in the traced code: that one is shown."""
    if type(error).__module__.startswith("torch._dynamo"):  # the error at the bottom of the tracer's chain
        for _ in range(32):
            inner = error.__cause__ or error.__context__
            if inner is None:
                break
            error = inner
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = repr(error.args[0])
    lines = text.splitlines() or [""]
    text = "\n".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
    if len(text) > 600:
        text = text[:600] + " ..."
    if type(error) in (ValueError, RuntimeError, TypeError) or not text:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"


class BlockFailure(ProgramError):
    """`node` raised `error` while being built (`building`) or run. `str()` keeps the builders'
    older one-line form (`span: path: Type: message`) for callers that print it as it is."""

    def __init__(self, node: Node, error: BaseException, *, building: bool, message: str | None = None,
                 code: str = BLOCK_FAILED, notes: list[tuple[str, Span | None]] | None = None) -> None:
        self.node, self.error, self.building = node, error, building
        text = message if message is not None else _strip_where(error_text(error), node)
        verb = "could not be built" if building else "failed"
        help_ = None
        if code == BLOCK_FAILED:
            help_ = ("check this node's arguments (`l3m blocks -v` lists each constructor's)" if building else
                     "the error was raised while this node ran; set L3M_DEBUG=1 to see the traceback")
        notes = list(notes or [])
        origin = code_origin(error) if code == BLOCK_FAILED else None
        if origin is not None:
            notes.append(origin)
        diag = Diagnostic(code, f"{describe(node)} {verb}: {text}", node.span, help_, notes)
        super().__init__(diag, f"{node.span}: {node.path}: {node.call.type_name}: {text}")


_LIBRARY_DIRS = tuple(str(Path(p).resolve()) + os.sep for p in {
    Path(__file__).resolve().parents[1],  # l3m itself
    Path(torch.__file__).resolve().parent,
    *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")),
} if p)


def code_origin(error: BaseException) -> tuple[str, Span] | None:
    """`("raised in forward()", file:line:col)` of the innermost frame of `error`'s traceback in the
    user's own Python code (an extension block), not in l3m, torch or installed libraries; None when
    the error came from library code alone (a built-in block) or has no traceback."""
    for fs in reversed(traceback.extract_tb(error.__traceback__)):
        file = fs.filename
        if file.startswith("<") or not os.path.isfile(file):
            continue
        full = str(Path(file).resolve())
        if full.startswith(_LIBRARY_DIRS):
            continue
        shown = os.path.relpath(full) if full.startswith(os.getcwd() + os.sep) else full
        line = fs.lineno or 1
        col = (fs.colno or 0) + 1
        end = (fs.end_colno or 0) + 1 if fs.end_lineno == fs.lineno else col
        return f"raised in {fs.name}()", Span(shown, line, col, line, max(end, col))
    return None


def _strip_where(text: str, node: Node) -> str:
    """Drop a `file:line:col: path: Type: ` prefix that an inner error already put on its message."""
    for prefix in (f"{node.span}: ", f"{node.path}: ", f"{node.call.type_name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def setting_span(program: Program, section: str, key: str) -> Span | None:
    """Where `section { key = ... }` is written (the section, else the file's first line)."""
    sec = program.sections.get(section)
    if sec is not None:
        span = sec.spans.get(key) or sec.span
        if span is not None:
            return span
    return Span(program.file, 1, 1, 1, 1)


# -- attribution of a failure while running ----------------------------------------------------------


def _frames(tb: TracebackType | None) -> list[tuple[FrameType, int]]:
    out = []
    while tb is not None:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


def _block_at(model: object, lineno: int) -> str | None:
    """The block path that line `lineno` of a MetaModel's generated forward calls."""
    schedule = getattr(model, "_schedule", None)
    if not isinstance(schedule, list):
        return None
    index = lineno - 3  # line 1: `def forward`, line 2: `d = dict(d)`, then one line per block
    return schedule[index] if 0 <= index < len(schedule) else None


def _shapes(frames: list[tuple[FrameType, int]], start: int, module: object) -> str | None:
    """`x float32[4, 16]` for the tensor arguments of `module.forward` in the frames after `start`."""
    for frame, _ in frames[start + 1:]:
        if frame.f_code.co_name == "forward" and frame.f_locals.get("self") is module:
            code = frame.f_code
            names = code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount]
            parts = []
            for name in names:
                v = frame.f_locals.get(name)
                if isinstance(v, torch.Tensor):
                    dtype = str(v.dtype).removeprefix("torch.")
                    parts.append(f"{name} {dtype}[{', '.join(str(s) for s in v.shape)}]")
            return ", ".join(parts) or None
    return None


def _model_nodes(program: Program) -> dict[str, Node]:
    from l3m.model.build import module_path

    return {module_path(n): n for n in program.blocks}


def _criterion_nodes(program: Program) -> dict[str, Node]:
    from l3m.model.criterion import _log_names

    nodes = sorted([n for n in program.nodes if n.role in ("loss", "metric")], key=lambda n: n.index)
    by_path = {n.path: n for n in nodes}
    return {name: by_path[path] for path, name in _log_names(nodes).items()}


def attribute(error: BaseException, program: Program, model: object | None = None) -> BlockFailure | None:
    """The node whose code raised `error` while the model or criterion ran, or None."""
    from l3m.model.criterion import Criterion
    from l3m.model.labels import LabelRangeError

    frames = _frames(error.__traceback__)
    for i in range(len(frames) - 1, -1, -1):  # the innermost node wins
        frame, lineno = frames[i]
        code = frame.f_code
        if code.co_filename.startswith("<l3m MetaModel"):
            owner = frame.f_locals.get("self")
            path = _block_at(owner, lineno)
            node = _model_nodes(program).get(path) if path else None
            if node is not None:
                return _failure(node, error, frames, i, owner.get_submodule(path))
        elif isinstance(frame.f_locals.get("self"), Criterion) and isinstance(frame.f_locals.get("name"), str):
            name, crit = frame.f_locals["name"], frame.f_locals["self"]
            node = _criterion_nodes(program).get(name) if isinstance(name, str) else None
            if node is not None:
                if isinstance(error, LabelRangeError):
                    return _label_failure(node, error)
                return _failure(node, error, frames, i, getattr(crit, name, None))
    if model is not None:  # a compiled forward: dynamo names the generated line in its message
        m = _GENERATED.search(str(error))
        path = _block_at(model, int(m.group(1))) if m else None
        node = _model_nodes(program).get(path) if path else None
        if node is not None:
            return BlockFailure(node, error, building=False)
    return None


def _failure(node: Node, error: BaseException, frames, index: int, module: object) -> BlockFailure:
    shapes = _shapes(frames, index, module) if module is not None else None
    notes = [(f"its inputs: {shapes}", None)] if shapes else []
    return BlockFailure(node, error, building=False, notes=notes)


def _label_failure(node: Node, error) -> BlockFailure:
    keys = {b.port: b.key for b in node.reads}
    key, logits = keys.get(error.port, error.port), keys.get(error.logits_port, error.logits_port)
    ignored = f" or the ignored {error.ignore_index}" if error.ignore_index not in (None, -100) else ""  # -100: torch's default
    message = (f"key '{key}' holds label {error.label}, but '{logits}' has {error.classes} classes "
               f"(labels must lie in [0, {error.classes}){ignored})")
    diag_help = f"check the data written to '{key}', or the number of classes of the block that writes '{logits}'"
    failure = BlockFailure(node, error, building=False, message=message, code=LABEL_RANGE)
    failure.diagnostic.help = diag_help
    return failure


@contextlib.contextmanager
def blame(program: Program, model: object | None = None) -> Iterator[None]:
    """Turn an exception raised inside a block, loss or metric into a `BlockFailure` naming it."""
    try:
        yield
    except ProgramError:
        raise
    except Exception as e:
        failure = attribute(e, program, model)
        if failure is None:
            raise
        raise failure from e

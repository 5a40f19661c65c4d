"""Go to definition: a key -> the node that wrote the version read there; a `let`, template (`def`) or
template parameter -> where it is defined (also through an imported namespace); an import -> the file;
a block, source, loss, ... type -> its Python class (found in the source, never imported)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from lsprotocol import types as t

from l3m.dsl import ast as a
from l3m.dsl.ir import Span
from l3m.dsl.parser import ParseFailure, parse
from l3m.dsl.source import SourceRefused, read_source
from l3m.lsp import entries
from l3m.lsp.diagnostics import span_range
from l3m.lsp.documents import Document
from l3m.lsp.index import enclosing_def
from l3m.lsp.positions import Pos, path_to_uri
from l3m.lsp.resolved import key_uses


def _imported(doc: Document, imp: a.ImportDecl, others: dict[str, str]) -> tuple[str, a.Module | None, list[str]]:
    """(path, parsed module or None, lines) of an imported file, from the editor's buffer when it is open."""
    path = os.path.normpath(os.path.join(os.path.dirname(doc.path), imp.path))
    text = others.get(path)
    if text is None:
        try:
            text = read_source(path)
        except (OSError, SourceRefused):
            return path, None, []
    key = (path, text)
    if key not in _PARSED:
        try:
            _PARSED[key] = parse(text, path)
        except ParseFailure:
            _PARSED[key] = None
        while len(_PARSED) > 32:  # imported files change rarely: keep the last few parses
            del _PARSED[next(iter(_PARSED))]
    return path, _PARSED[key], text.split("\n")


_PARSED: dict[tuple[str, str], a.Module | None] = {}


def find_template(doc: Document, mod: a.Module, parts: list[str], others: dict[str, str] | None = None
                  ) -> tuple[a.DefDecl | None, str, list[str]]:
    """(the template `T` or `ns.T` names, its file, that file's lines), from the file or an imported one."""
    if len(parts) == 1:
        return next((d for d in mod.defs if d.name == parts[0]), None), doc.path, doc.lines
    imp = next((i for i in mod.imports if i.alias == parts[0]), None)
    if imp is None or len(parts) != 2:
        return None, doc.path, doc.lines
    path, sub, lines = _imported(doc, imp, others or {})
    return (next((d for d in sub.defs if d.name == parts[1]), None) if sub else None), path, lines


def _loc(path: str, span: Span, lines: list[str], encoding: str) -> t.Location:
    return t.Location(path_to_uri(path), span_range(span, lines, encoding))


def _in_namespace(doc: Document, mod: a.Module, parts: list[str], want: str, others: dict[str, str],
                  encoding: str) -> t.Location | None:
    """`ns.name` -> the let (want="let") or def (want="def") `name` of the file imported as `ns`."""
    imp = next((i for i in mod.imports if i.alias == parts[0]), None)
    if imp is None:
        return None
    path, sub, lines = _imported(doc, imp, others)
    if sub is None:
        return None
    pool = sub.lets if want == "let" else sub.defs
    hit = next((x for x in pool if x.name == parts[-1]), None)
    return _loc(path, hit.span, lines, encoding) if hit else None


def _key(doc: Document, span: Span, direction: str, encoding: str) -> t.Location | None:
    if not doc.fresh():
        return None
    uses = key_uses(doc.compiled, span)
    if not uses:
        return None
    u = uses[0]
    target = u.write.binding.span if (direction == "read" and u.write is not None) else u.binding.span
    lines = doc.compiled.sources.texts.get(target.file, [])
    return t.Location(path_to_uri(os.path.abspath(target.file)), span_range(target, lines, encoding))


def module_file(module: str, near: str) -> Path | None:
    """The source file of a Python module, found without importing it (importing could load torch)."""
    parts = module.split(".")
    if parts[0] == "l3m":
        import l3m

        roots = [Path(l3m.__file__).resolve().parent.parent]
    else:
        from l3m.dsl.ext_locate import search_roots

        roots = search_roots(near)
    for root in roots:
        for cand in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if cand.is_file():
                return cand
    return None


def python_location(entry, near: str, encoding: str) -> t.Location | None:
    """Where a registered block, source, loss, ... is defined: its `class`/`def`, else its registered name."""
    module = getattr(entry, "module", "")
    path = module_file(module, near) if module else None
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    name = re.escape(entry.name)
    for pattern in (rf"^\s*(class|def)\s+{name}\b", rf"[\"']{name}[\"']"):
        for i, line in enumerate(lines):
            m = re.search(pattern, line)
            if m:
                col = line.index(entry.name, m.start())
                return _loc(str(path), Span(str(path), i + 1, col + 1, i + 1, col + 1 + len(entry.name)), lines,
                            encoding)
    return None


def definition(doc: Document, pos: Pos, others: dict[str, str] | None = None,
               encoding: str = "utf-16") -> t.Location | None:
    others = others or {}
    mod = doc.module()
    occ = doc.at(pos)
    if mod is None or occ is None:
        return None
    lines = doc.lines
    here = doc.path
    kind, data = occ.kind, occ.data
    if kind == "key":
        _node, ref, direction = data
        return _key(doc, ref.span, direction, encoding)
    if kind == "keydecl" and doc.fresh() and doc.compiled.flow is not None:
        writes = doc.compiled.flow.writes.get(data.name)
        if writes:
            w = writes[0].binding.span
            return t.Location(path_to_uri(os.path.abspath(w.file)),
                              span_range(w, doc.compiled.sources.texts.get(w.file, []), encoding))
        return None
    if kind == "ref":
        ref: a.Ref = data
        if len(ref.parts) == 1:
            d = enclosing_def(mod, pos, doc.text)
            p = next((p for p in d.params if p.name == ref.parts[0]), None) if d else None
            if p is not None:
                return _loc(here, p.span, lines, encoding)
            let = next((x for x in mod.lets if x.name == ref.parts[0]), None)
            return _loc(here, let.span, lines, encoding) if let else None
        return _in_namespace(doc, mod, ref.parts, "let", others, encoding)
    if kind in ("type", "arg"):
        call = data[0]
        role = data[-1]
        if role != "template":
            entry = entries.lookup(call.dotted, doc.compiled) if kind == "type" else None
            return python_location(entry, doc.path, encoding) if entry is not None else None
        d, path, def_lines = find_template(doc, mod, call.parts, others)
        if d is None:
            return None
        if kind == "arg":
            p = next((p for p in d.params if p.name == data[1].name), None)
            return _loc(path, (p or d).span, def_lines, encoding)
        return _loc(path, d.span, def_lines, encoding)
    if kind in ("import", "alias"):
        path = os.path.normpath(os.path.join(os.path.dirname(doc.path), data.path))
        return t.Location(path_to_uri(path), t.Range(t.Position(0, 0), t.Position(0, 0)))
    if kind in ("let", "def", "node", "param"):
        span = data[1].span if kind == "param" else (data[0].span if kind == "node" else data.span)
        return _loc(here, span, lines, encoding)
    return None

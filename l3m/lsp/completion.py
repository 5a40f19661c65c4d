"""Completion: block types of the kind the place needs, argument names inside `Type(`, an argument's or
setting's allowed values, keys in port lists, settings keys inside `train { }`, `mesh { }`, `log { }` and
`data { }`, template names, stage names and top-level keywords."""

from __future__ import annotations

import re
import typing

from lsprotocol import types as t

from l3m.config import SECTION_SCHEMAS
from l3m.dsl import ast as a
from l3m.lsp import entries
from l3m.lsp.context import STAGES, Context, analyse
from l3m.lsp.documents import Document
from l3m.lsp.hover import section_fields, setting_text
from l3m.lsp.positions import Pos

K = t.CompletionItemKind
TOP_KEYWORDS = ("let", "import", "extension", "keys", "data", "model", "def", "loss", "metric", "optimizer",
                "schedule", "train", "mesh", "log", "default")
DTYPES = ("float", "long", "int", "bool")


def _literal_options(ann: typing.Any) -> list[str]:
    """The strings a `Literal[...]` annotation (an object, or its text) allows."""
    if ann is None:
        return []
    if isinstance(ann, str):
        found = re.findall(r"Literal\[([^\]]*)\]", ann)
        return [s for group in found for s in re.findall(r"['\"]([^'\"]*)['\"]", group)]
    if typing.get_origin(ann) is typing.Literal:
        return [x for x in typing.get_args(ann) if isinstance(x, str)]
    return [o for x in typing.get_args(ann) for o in _literal_options(x)]


def _value_items(doc: Document, options: list[str]) -> list[t.CompletionItem]:
    # Allowed strings are written bare where they are names (`mlp = swiglu`, as the shipped files do).
    items = [t.CompletionItem(o if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", o) else f'"{o}"', kind=K.EnumMember,
                              detail="one of: " + ", ".join(options), sort_text=f"0{o}") for o in options]
    for name, value in _lets(doc).items():
        items.append(t.CompletionItem(name, kind=K.Variable, detail=f"let {name} = {value}", sort_text=f"1{name}"))
    if not options:
        items += [t.CompletionItem(w, kind=K.Keyword, sort_text=f"2{w}") for w in ("true", "false", "null")]
    return items


def _components(ann: typing.Any, doc: Document) -> list[t.CompletionItem]:
    """The entries that fit a component parameter (`attn: AttentionLayer | None`), as calls to write."""
    from l3m.dsl.typecheck import interfaces_in

    wanted = {i.__name__ for i in interfaces_in(ann)} if ann is not None else set()
    if not wanted:
        return []
    pool = entries.names(tuple(registry_kinds()), doc.compiled)
    return [t.CompletionItem(e.name, kind=K.Class, detail=" / ".join(e.interfaces), insert_text=f"{e.name}()",
                             sort_text=f"0{e.name}") for e in pool if wanted & set(getattr(e, "interfaces", ()) or ())]


def registry_kinds() -> tuple[str, ...]:
    from l3m import registry

    return registry.KINDS


def _lets(doc: Document) -> dict[str, str]:
    """`let` names visible in the file: from its last compiled program, else read from the text."""
    found = {m: "" for m in re.findall(r"(?m)^\s*let\s+([A-Za-z_][A-Za-z0-9_]*)", doc.text)}
    prog = doc.last_program
    if prog is not None:
        found.update({k: entries.literal(v)[:60] for k, v in prog.lets.items() if k in found})
    return found


def _keys(doc: Document) -> list[str]:
    """Keys of the file: written or read by its nodes (template-internal keys left out), and declared."""
    seen: dict[str, None] = {}
    prog = doc.last_program
    if prog is not None:
        for n in prog.nodes:
            for b in n.writes + n.reads:
                if "." not in b.key:
                    seen.setdefault(b.key)
        for k in prog.keys:
            seen.setdefault(k)
    for written in _WRITES.findall(_COMMENT.sub("", doc.text)):  # what the text on screen writes
        for key in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", written):
            seen.setdefault(key)
    return list(seen)


_COMMENT = re.compile(r"#[^\n]*")
_WRITES = re.compile(r"->\s*([!A-Za-z0-9_,\s]*?)(?=\s*(?:[A-Za-z_][A-Za-z0-9_]*\s*:|[}\n]|$))")


def _entry_item(entry: typing.Any) -> t.CompletionItem:
    doc = (entry.doc or "").split("\n\n", 1)[0]
    return t.CompletionItem(entry.name, kind=K.Class, detail=entries.signature_text(entry).replace("\n", " "),
                            documentation=t.MarkupContent(t.MarkupKind.Markdown, doc) if doc else None)


def _templates(doc: Document) -> list[t.CompletionItem]:
    mod = doc.module()
    names = [d.name for d in mod.defs] if mod is not None else \
        re.findall(r"(?m)^\s*def\s+([A-Za-z_][A-Za-z0-9_]*)", doc.text)
    items = [t.CompletionItem(n, kind=K.Function, detail="template") for n in names]
    if mod is not None:
        items += [t.CompletionItem(f"{i.alias}.", kind=K.Module, detail=f'import "{i.path}"') for i in mod.imports]
    return items


def _template_params(doc: Document, name: str) -> list[a.Param]:
    mod = doc.module()
    d = next((x for x in mod.defs if x.name == name), None) if mod is not None else None
    return d.params if d else []


def items_for(doc: Document, ctx: Context) -> list[t.CompletionItem]:
    kind = ctx.kind
    if kind == "type":
        if ctx.template:
            return _templates(doc)
        return [_entry_item(e) for e in entries.names(ctx.kinds, doc.compiled)]
    if kind == "arg":
        entry = entries.lookup(ctx.call, doc.compiled) if ctx.call else None
        if entry is not None:
            return [t.CompletionItem(p.name, kind=K.Property, detail=entries.param_text(p), insert_text=f"{p.name} = ",
                                     sort_text=f"{0 if p.default is p.empty else 1}{i:03d}")
                    for i, p in enumerate(entries.params(entry)) if p.name not in ctx.given]
        return [t.CompletionItem(p.name, kind=K.Property, detail="template parameter", insert_text=f"{p.name} = ")
                for p in _template_params(doc, ctx.call or "") if p.name not in ctx.given]
    if kind == "value":
        options: list[str] = []
        components: list[t.CompletionItem] = []
        entry = entries.lookup(ctx.call, doc.compiled) if ctx.call and ctx.arg else None
        if entry is not None:
            p = next((p for p in entries.params(entry) if p.name == ctx.arg), None)
            if p is not None:
                options = _literal_options(getattr(entry, "type_hints", {}).get(ctx.arg)) or \
                    _literal_options(entries.annotation(p))
                components = _components(getattr(entry, "type_hints", {}).get(ctx.arg), doc)
        return components + _value_items(doc, options)
    if kind == "section_key":
        if ctx.section not in SECTION_SCHEMAS:
            return []
        return [t.CompletionItem(f, kind=K.Property, insert_text=f"{f} = ", detail=_type_word(ann),
                                 documentation=t.MarkupContent(t.MarkupKind.Markdown, setting_text(ctx.section, f) or ""))
                for f, ann in section_fields(ctx.section).items()]
    if kind == "section_value":
        ann = section_fields(ctx.section).get(ctx.setting) if ctx.section in SECTION_SCHEMAS else None
        items = _value_items(doc, _literal_options(ann))
        return items
    if kind == "key":
        return [t.CompletionItem(k, kind=K.Variable, detail="key") for k in _keys(doc)]
    if kind == "port":
        entry = entries.lookup(ctx.call, doc.compiled) if ctx.call else None
        ports = list(getattr(entry, "inputs", None) or ()) + list(getattr(entry, "outputs", None) or ())
        return [t.CompletionItem(p.name, kind=K.Field, detail="port", insert_text=f"{p.name} = ")
                for p in ports if p.name != "*" and p.name not in ctx.given]
    if kind == "stage_item":
        return [t.CompletionItem(s, kind=K.Module, detail="stage") for s in STAGES] + \
            [t.CompletionItem("model", kind=K.Keyword)]
    if kind == "keys_decl":
        return [t.CompletionItem(d, kind=K.TypeParameter) for d in DTYPES]
    if kind == "top":
        return [t.CompletionItem(w, kind=K.Keyword) for w in TOP_KEYWORDS]
    return []


def _type_word(ann: typing.Any) -> str:
    return ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")


def complete(doc: Document, pos: Pos) -> t.CompletionList:
    lines = doc.lines
    before = "\n".join(lines[:pos.line] + [lines[pos.line][:pos.char] if pos.line < len(lines) else ""])
    ctx = analyse(before)
    items = items_for(doc, ctx)
    if ctx.prefix:
        low = ctx.prefix.lower()
        items = [i for i in items if low in i.label.lower()] or items
    return t.CompletionList(is_incomplete=False, items=items)

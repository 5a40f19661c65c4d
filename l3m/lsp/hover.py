"""Hover: what the name under the cursor is. A block type's signature and doc, an argument's type and
default, a key's shape and the node that wrote the version read there, a `let`'s value, a setting's
type and default."""

from __future__ import annotations

import dataclasses
import functools
import typing

from lsprotocol import types as t

from l3m.config import SECTION_SCHEMAS
from l3m.dsl import ast as a
from l3m.dsl.ir import Span
from l3m.lsp import entries
from l3m.lsp.definition import find_template
from l3m.lsp.diagnostics import span_range
from l3m.lsp.documents import Document
from l3m.lsp.index import enclosing_def
from l3m.lsp.positions import Pos
from l3m.lsp.resolved import describe_node, key_uses, node_by_span, shape_of


def source_text(lines: list[str], span: Span) -> str:
    """The text a span covers in this document."""
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1:span.end_col - 1] if span.line <= len(lines) else ""
    first = lines[span.line - 1][span.col - 1:]
    middle = lines[span.line:span.end_line - 1]
    last = lines[span.end_line - 1][:span.end_col - 1]
    return "\n".join([first, *middle, last])


def _code(text: str) -> str:
    return f"```l3m\n{text}\n```"


def template_text(d: a.DefDecl, lines: list[str]) -> str:
    params = ", ".join(p.name + (f" = {source_text(lines, p.default.span)}" if p.default else "") for p in d.params)
    ins = ", ".join(n for n, _ in d.inputs)
    outs = ", ".join(n for n, _ in d.outputs)
    return _code(f"def {d.name}({params}) {ins + ' ' if ins else ''}-> {outs}") + "\n\nTemplate (a reusable sub-model)."


@functools.cache
def section_fields(section: str) -> dict[str, typing.Any]:
    """`l3m.config.section_fields`, computed once per section (it resolves type hints)."""
    from l3m.config import section_fields as fields

    return fields(section)


def _setting_default(section: str, name: str) -> str | None:
    schema = SECTION_SCHEMAS.get(section)
    if schema is None:
        return None
    for f in dataclasses.fields(schema):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return entries.literal(f.default)
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return entries.literal(f.default_factory())  # type: ignore[misc]
    return None


def _type_name(ann: typing.Any) -> str:
    return ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")


def setting_text(section: str, name: str) -> str | None:
    if section not in SECTION_SCHEMAS:
        return None
    fields_ = section_fields(section)
    if name not in fields_:
        return None
    default = _setting_default(section, name)
    return _code(f"{section}.{name}: {_type_name(fields_[name])}" + (f" = {default}" if default else "")) + \
        f"\n\nSetting of the `{section}` section."


def key_text(doc: Document, ref: a.KeyRef, direction: str) -> str:
    parts = [_code(f"key {ref.key}")]
    uses = key_uses(doc.compiled, ref.span) if doc.fresh() else []
    if not uses:
        return parts[0] + ("\n\nNothing writes this key." if doc.fresh() and direction == "read" else "")
    u = uses[0]
    if u.write is not None:
        shape = shape_of(doc.compiled, u.binding.key, u.write.version)
        if shape:
            parts[0] = _code(f"key {ref.key}: {shape}")
        if direction == "read":
            parts.append(f"Reads version {u.write.version}, written by {describe_node(u.write.node)}, "
                         f"line {u.write.binding.span.line}.")
        else:
            readers = ", ".join(f"`{r.name}`" for r in u.write.readers) or "nothing"
            parts.append(f"Version {u.write.version}, written here by {describe_node(u.node)}; read by {readers}.")
    elif direction == "read":
        parts.append("Nothing writes this key.")
    if u.binding.port:
        parts.append(f"Port `{u.binding.port}` of `{u.node.call.type_name}`.")
    if len(uses) > 1:
        parts.append(f"({len(uses)} instances of this line: {', '.join(f'`{x.node.path}`' for x in uses[:4])}"
                     + (", ..." if len(uses) > 4 else "") + ")")
    return "\n\n".join(parts)


def _ref_text(doc: Document, mod: a.Module, ref: a.Ref, pos: Pos, lines: list[str]) -> str | None:
    name = ref.parts[-1]
    if len(ref.parts) == 1:
        d = enclosing_def(mod, pos, doc.text)
        if d is not None and any(p.name == name for p in d.params):
            return _code(name) + f"\n\nParameter of template `{d.name}`."
        let = next((x for x in mod.lets if x.name == name), None)
        if let is not None:
            return _let_text(doc, let, lines)
        return None
    imp = next((i for i in mod.imports if i.alias == ref.parts[0]), None)
    if imp is not None:
        return _code(ref.dotted) + f"\n\n`{name}` from `{imp.path}`."
    return None


def _let_text(doc: Document, let: a.LetDecl, lines: list[str]) -> str:
    text = f"let {let.name} = {source_text(lines, let.value.span)}"
    prog = doc.compiled.program if doc.compiled is not None else None
    if prog is not None and let.name in prog.lets:
        value = entries.literal(prog.lets[let.name])
        if value != source_text(lines, let.value.span):
            text += f"\n# = {value[:200]}"
    return _code(text)


def hover(doc: Document, pos: Pos, encoding: str = "utf-16", others: dict[str, str] | None = None) -> t.Hover | None:
    mod = doc.module()
    occ = doc.at(pos)
    if mod is None or occ is None:
        return None
    lines = doc.lines
    text: str | None = None
    kind, data = occ.kind, occ.data
    if kind == "type":
        call, role = data
        d, _path, def_lines = find_template(doc, mod, call.parts, others) if role == "template" else (None, "", [])
        if d is not None:
            text = template_text(d, def_lines)
        else:
            entry = entries.lookup(call.parts[-1], doc.compiled) if len(call.parts) == 1 else None
            text = entries.hover_entry(entry) if entry is not None else None
    elif kind == "arg":
        call, arg, role = data
        if role == "template":
            d, _path, def_lines = find_template(doc, mod, call.parts, others)
            p = next((p for p in d.params if p.name == arg.name), None) if d else None
            if p is not None:
                text = _code(p.name + (f" = {source_text(def_lines, p.default.span)}" if p.default else "")) + \
                    f"\n\nParameter of template `{d.name}`."
        else:
            entry = entries.lookup(call.dotted, doc.compiled)
            text = entries.hover_param(entry, arg.name) if entry is not None else None
    elif kind == "key":
        _node, ref, direction = data
        text = key_text(doc, ref, direction)
    elif kind == "keydecl":
        shape = f"[{', '.join(map(str, data.shape))}]" if data.shape is not None else ""
        text = _code(f"{data.name}: {data.dtype}{shape}") + "\n\nDeclared key."
    elif kind == "let":
        text = _let_text(doc, data, lines)
    elif kind == "ref":
        text = _ref_text(doc, mod, data, pos, lines)
    elif kind == "node":
        nodes = node_by_span(doc.compiled, occ.span) if doc.fresh() else []
        if nodes:
            n = nodes[0]
            text = describe_node(n)[0].upper() + describe_node(n)[1:] + \
                f"\n\nReads `{', '.join(n.read_keys) or '-'}`, writes `{', '.join(n.write_keys) or '-'}`."
    elif kind == "setting":
        sec, s = data
        text = setting_text(sec.name, s.name)
    elif kind == "def":
        text = template_text(data, lines)
    elif kind == "param":
        d, p = data
        text = _code(p.name + (f" = {source_text(lines, p.default.span)}" if p.default else "")) + \
            f"\n\nParameter of template `{d.name}`."
    elif kind == "import":
        text = f"Imports `{data.path}` as `{data.alias}`."
    if not text:
        return None
    return t.Hover(t.MarkupContent(t.MarkupKind.Markdown, text), span_range(occ.span, lines, encoding))

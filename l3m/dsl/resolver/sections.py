"""Settings sections (`train { ... }`, `mesh { ... }`, ...) -> `Program.sections`: each setting
checked against the section's schema (`l3m.config`), overridable as `SECTION.FIELD=VALUE`."""

from __future__ import annotations

from l3m.config import SECTION_SCHEMAS, section_fields
from l3m.dsl import ast
from l3m.dsl.diagnostics import did_you_mean
from l3m.dsl.ir import Program, Section, Span
from l3m.dsl.resolver.calls import literal_options
from l3m.dsl.resolver.context import Fail
from l3m.dsl.resolver.evaluate import Env
from l3m.dsl.resolver.tools import Tools
from l3m.dsl.typecheck import describe, mismatch


def resolve_sections(mod: ast.Module, env: Env, prog: Program, t: Tools) -> None:
    """Every known section, written or not (an unwritten one is empty, its span None)."""
    error = t.report.error
    seen: dict[str, ast.SectionDecl] = {}
    for sec in mod.sections:
        if sec.name in seen:
            error("E603", f"section '{sec.name}' appears twice", sec.span)
            continue
        seen[sec.name] = sec
    for name in SECTION_SCHEMAS:
        sec = seen.get(name)
        out = Section(name, sec.span if sec else None)
        fields_ = section_fields(name)
        t.overrides.valid.update(f"{name}.{f}" for f in fields_)
        given: dict[str, tuple[ast.Expr, Span]] = {}
        for s in sec.settings if sec else []:
            if s.name in given:
                error("E207", f"'{name}.{s.name}' is set twice", s.span)
            given[s.name] = (s.value, s.span)
        for f in fields_:
            ov = t.overrides.take(f"{name}.{f}")
            if ov is not None:
                given[f] = (ov, ov.span)
        for key, (expr, span) in given.items():
            if key not in fields_:
                error("E602", f"'{name}' has no setting '{key}'", span, did_you_mean(key, fields_))
                continue
            try:
                value = t.evaluator.eval(expr, env)
            except Fail:
                continue
            wrong = mismatch(value, fields_[key])
            if wrong:
                error("E602", f"'{name}.{key}' must be {wrong}, not {describe(value)}", expr.span,
                      did_you_mean(value, literal_options(fields_[key])) if isinstance(value, str) else None)
                continue
            out.values[key] = value
            out.spans[key] = expr.span
            if isinstance(expr, ast.ListExpr):  # each item's place, for a diagnostic about one glob
                for i, item in enumerate(expr.items):
                    out.spans[f"{key}[{i}]"] = item.span
        prog.sections[name] = out

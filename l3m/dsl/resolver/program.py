"""The driver: a file + overrides -> `Result`. Each stage runs once, in order: overrides are
parsed, files loaded, extensions read, lets evaluated, keys declared, nodes and the model built,
sections checked, and what was left unused reported."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from l3m.dsl.diagnostics import Diagnostic, SourceCache
from l3m.dsl.ir import KeyDecl, Program
from l3m.dsl.resolver.calls import ROLE_KINDS, resolve_call
from l3m.dsl.resolver.context import Fail, Reporter
from l3m.dsl.resolver.defaults import Defaults
from l3m.dsl.resolver.entries import Catalog
from l3m.dsl.resolver.evaluate import Env, Evaluator, PendingCall
from l3m.dsl.resolver.models import ModelBuilder
from l3m.dsl.resolver.modules import Loader
from l3m.dsl.resolver.overrides import Overrides
from l3m.dsl.resolver.sections import resolve_sections
from l3m.dsl.resolver.tools import Tools


def _record(value: object) -> object:
    """A let's value as the program records it: a component (resolved where it is used) as its text."""
    if isinstance(value, PendingCall):
        return str(value)
    if isinstance(value, list):
        return [_record(v) for v in value]
    return value


@dataclass
class Result:
    program: Program | None
    diagnostics: list[Diagnostic]
    sources: SourceCache
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # imported file -> the imports to it

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


def resolve(path: str, overrides: list[str] | tuple[str, ...] = (), extensions: tuple[str, ...] = (),
            import_extensions: bool = False) -> Result:
    """Resolve `path`. `extensions` are modules named on the command line; they and the file's own
    are read from source unless `import_extensions` (plan/train/eval/export import them)."""
    report = Reporter()
    try:
        return _resolve(path, list(overrides), extensions, import_extensions, report)
    except RecursionError:  # a last resort: what input can make deep is walked without recursion
        report.error("E004", "the program nests too deeply to compile", None)
        return Result(None, report.diagnostics, report.sources)


def _resolve(path: str, override_texts: list[str], cli_extensions: tuple[str, ...], import_extensions: bool,
             report: Reporter) -> Result:
    ovr = Overrides(override_texts, report)
    loader = Loader(report)
    scope = loader.load(path)
    if scope is None:
        return Result(None, report.diagnostics, report.sources)
    prog = Program(file=scope.file, overrides=list(override_texts))
    prog.imports = [s.file for s in loader.modules.values() if s is not scope]
    mod = scope.module
    env = Env(scope)
    t = Tools(report, ovr, Evaluator(report, ovr, scope), Catalog(report), defaults=Defaults())
    ovr.valid.update(scope.lets)
    t.catalog.load_extensions(mod, cli_extensions, import_extensions, path, prog)
    t.defaults.collect(list(loader.modules.values()), t)
    for name in scope.lets:  # evaluate every let, so errors show even in unused ones
        with contextlib.suppress(Fail):
            prog.lets[name] = _record(t.evaluator.let_value(scope, name))
    for k in mod.keys:
        if k.name in prog.keys:
            report.error("E207", f"key '{k.name}' is declared twice", k.span)
        prog.keys[k.name] = KeyDecl(k.name, k.dtype, k.shape, k.span)
    builder = ModelBuilder(prog, t)
    for n in mod.data:
        builder.node(n, env, "data", path=f"data.{n.name}")
    if len(mod.models) > 1:
        report.error("E603", "a file declares one model; nest the others inside it", mod.models[1].span)
    for m in mod.models[:1]:
        ovr.set_root_model(m)
        builder.model_item(m, env, parent=None, key_map=None)
    for n in mod.losses:
        builder.node(n, env, "loss", path=f"loss.{n.name}")
    for n in mod.metrics:
        builder.node(n, env, "metric", path=f"metric.{n.name}")
    for kind in ("optimizer", "schedule"):
        calls = getattr(mod, kind)
        for extra in calls[1:]:
            report.error("E603", f"'{kind}' is declared twice", extra.span)
        if calls:
            setattr(prog, kind, resolve_call(calls[0], env, ROLE_KINDS[kind], kind, t))
    resolve_sections(mod, env, prog, t)
    t.defaults.report_unused(t)
    ovr.report_unused()
    for alias in scope.imports:
        if alias not in scope.used_imports:
            imp = next(i for i in mod.imports if i.alias == alias)
            report.error("W103", f"import '{alias}' is never used", imp.alias_span)
    return Result(prog, report.diagnostics, report.sources, dict(report.chains))

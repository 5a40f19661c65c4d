"""Check references that only fail when the program runs, so that lint reports them first.

- E106: a loss or metric reads a key that a loss or metric writes (the criterion never passes
  their outputs on, so the key would be missing at the first step);
- E208: a block's `tie` argument names no block, several blocks, or the block itself (the builder
  would refuse it);
- E602: a `train` setting that counts something (steps, intervals, workers, the clipping norm) is negative.
"""

from __future__ import annotations

from l3m.dsl.diagnostics import Diagnostic, did_you_mean
from l3m.dsl.ir import Program
from l3m.dsl.schedule import Dataflow

_CRITERION = ("loss", "metric")


# `train` settings that count something: a negative value means nothing (and some crash deep inside).
_NON_NEGATIVE = ("steps", "eval_every", "eval_steps", "checkpoint_every", "keep", "log_every", "num_workers",
                 "grad_clip", "ema_start")


def check_references(program: Program, flow: Dataflow) -> list[Diagnostic]:
    return _criterion_reads(program, flow) + _ties(program) + _counts(program)


def _counts(program: Program) -> list[Diagnostic]:
    section = program.sections.get("train")
    if section is None:
        return []
    diags = []
    for key in _NON_NEGATIVE:
        value = section.values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            diags.append(Diagnostic("E602", f"'train.{key}' must be 0 or more, not {value}",
                                    section.spans.get(key) or section.span))
    ema = section.values.get("ema")  # a decay: 0 (off) up to, not including, 1 (l3m.train.ema)
    if isinstance(ema, (int, float)) and not isinstance(ema, bool) and not 0 <= ema < 1:
        diags.append(Diagnostic("E602", f"'train.ema' is a decay from 0 (off) up to 1 (excluded), not {ema}",
                                section.spans.get("ema") or section.span, "e.g. train { ema = 0.999 }"))
    return diags


def _criterion_reads(program: Program, flow: Dataflow) -> list[Diagnostic]:
    diags = []
    for node in program.nodes:
        if node.role not in _CRITERION:
            continue
        for i, b in enumerate(node.reads):
            w = flow.reads.get((node.path, i))
            if w is None or w.node.role not in _CRITERION:
                continue
            diags.append(Diagnostic(
                "E106", f"{node.role} '{node.name}' reads key '{b.key}', which {w.node.role} '{w.node.name}' "
                "writes; losses and metrics do not pass their outputs on", b.span,
                "read a key that the data or the model writes",
                [(f"{w.node.role} '{w.node.name}' writes it here", w.binding.span)]))
    return diags


def _ties(program: Program) -> list[Diagnostic]:
    from l3m.model.naming import tie_matches

    blocks = sorted(program.blocks, key=lambda n: n.index)
    tying = [(n, n.call.kwargs.get("tie")) for n in blocks if n.valid]
    tying = [(n, t) for n, t in tying if isinstance(t, str) and t]
    if not tying:
        return []
    diags = []
    for node, tie in tying:
        span = node.call.kwarg_spans.get("tie", node.span)
        matches = tie_matches(tie, blocks)
        if len(matches) == 1 and matches[0] is not node:
            continue
        if not matches:
            msg = f"block '{node.name}' ties to '{tie}', which names no block"
            help_ = did_you_mean(tie, [n.name for n in blocks] + [n.path for n in blocks])
        elif len(matches) > 1:
            msg = f"block '{node.name}' ties to '{tie}', which names {len(matches)} blocks"
            help_ = "name one by its path: " + ", ".join(f"'{m.path}'" for m in matches)
        else:
            msg = f"block '{node.name}' ties to itself"
            help_ = "tie to the block whose weight it shares, e.g. the token embedding"
        diags.append(Diagnostic("E208", msg, span, help_))
    return diags

"""EleutherAI's lm-eval harness on an l3m language model (`pip install 'l3m[lm-eval]'`).

`HarnessCore` answers the harness's three kinds of request on plain Python values (testable without
lm-eval): `loglikelihood` of (context, continuation) pairs with whether greedy decoding yields the
continuation, `loglikelihood_rolling` of whole texts (after EOS, as the harness conditions on its
end-of-text token), and `generate_until` (greedy, up to a stop string or `max_gen_toks`; through
l3m.generation's key/value cache where the model has one, `LanguageModel.cached_greedy`).
`lm_class()` wraps it in an `lm_eval.api.model.LM` subclass; `register()` adds it to the harness as
`--model l3m --model_args run=RUN_DIR[,checkpoint=...]`; `--suite lm-eval` runs tasks directly.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from l3m.evals.errors import EvalInputError
from l3m.evals.lm_scoring import greedy_until, rolling_loglikelihood, score_pairs
from l3m.evals.model import EvalModel
from l3m.evals.perplexity import LanguageModel

DEFAULT_MAX_GEN_TOKS = 256
HARNESS_NAME = "l3m"


class HarnessCore:
    """The harness's requests on an l3m `LanguageModel` (or anything with `encode`, `decode`,
    `logits_fn`, `context` and `eos_id`)."""

    def __init__(self, lm: LanguageModel, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> None:
        self.lm, self.max_gen_toks = lm, max_gen_toks

    def _prefix(self) -> list[int]:
        return [self.lm.eos_id] if self.lm.eos_id is not None else []

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in pairs:
            prefix = self._prefix() if not context else []
            out += score_pairs(self.lm.logits_fn, self.lm.encode, [(context, continuation)], self.lm.context, prefix)
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            ids = self._prefix() + self.lm.encode(text)  # no EOS to condition on: the first token is not scored
            ll, _ = rolling_loglikelihood(self.lm.logits_fn, ids, self.lm.context)
            out.append(ll)
        return out

    def generate_until(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        out = []
        cached_greedy = getattr(self.lm, "cached_greedy", None)
        cached = cached_greedy() if callable(cached_greedy) else None  # None: the model has no usable cache
        for context, kwargs in requests:
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = self.lm.encode(context) or self._prefix() or [0]

            def stop(new: list[int], until: list[str] = until) -> bool:
                return any(u in self.lm.decode(new) for u in until)

            stops = [self.lm.eos_id] if self.lm.eos_id is not None else []
            text = self.lm.decode(greedy_until(self.lm.logits_fn, prompt, max_new, self.lm.context, stops, stop,
                                                 cached))
            for u in until:
                text = text.split(u, 1)[0]
            out.append(text)
        return out


def lm_class() -> type:
    """The `lm_eval.api.model.LM` subclass (imports lm-eval)."""
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise EvalInputError("the lm-eval suite needs EleutherAI's harness: pip install 'l3m[lm-eval]'") from None

    class L3mLM(LM):
        """An l3m checkpoint for lm-eval: `--model l3m --model_args run=RUN_DIR[,checkpoint=PATH]`."""

        def __init__(self, core: HarnessCore | None = None, run: str = "", checkpoint: str | None = None,
                     max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, **_: Any) -> None:
            super().__init__()
            if core is None:
                from l3m.evals.model import load_model

                core = HarnessCore(LanguageModel(load_model(run, (), checkpoint)), int(max_gen_toks))
            self.core = core

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> L3mLM:
            args = dict(kv.split("=", 1) for kv in arg_string.split(",") if "=" in kv)
            return cls(**args)

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            return self.core.loglikelihood([tuple(r.args) for r in requests])

        def loglikelihood_rolling(self, requests) -> list[float]:
            return self.core.loglikelihood_rolling([r.args[0] for r in requests])

        def generate_until(self, requests) -> list[str]:
            return self.core.generate_until([tuple(r.args) for r in requests])

    return L3mLM


def register() -> type:
    """Make `--model l3m` known to the harness's own command line; the class."""
    cls = lm_class()
    from lm_eval.api.registry import register_model

    return register_model(HARNESS_NAME)(cls)


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`{task: {metric,filter: value}}` -> `{task/metric: value}` (numbers only)."""
    out: dict[str, float] = {}
    for task, metrics in results.items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{task}/{name.replace(',none', '')}"] = float(value)
    return out


def lm_eval_suite(m: EvalModel, args: argparse.Namespace) -> dict[str, float]:
    if not args.tasks:
        raise EvalInputError("--suite lm-eval needs --tasks NAME[,NAME...] (lm-eval's task names)")
    cls = lm_class()
    import lm_eval

    model = cls(core=HarnessCore(LanguageModel(m)))
    limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
    manager = None
    if args.task_dir:
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=args.task_dir)
    try:
        out = lm_eval.simple_evaluate(model=model, tasks=args.tasks.split(","), limit=limit, task_manager=manager)
    except (KeyError, ValueError) as e:  # an unknown task name, a task that cannot be built
        raise EvalInputError(f"lm-eval: {e}") from None
    if not out or "results" not in out:
        raise EvalInputError("lm-eval returned no results")
    return flatten(out["results"])

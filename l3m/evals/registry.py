"""The suites `l3m eval --suite NAME` knows: name -> (module, function, one-line help).

Listed here without importing them, so the command line stays fast; a suite function takes
`(EvalModel, argparse.Namespace)` and returns `{metric: number}`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

SUITES: dict[str, tuple[str, str, str]] = {
    "clip-zeroshot": ("l3m.evals.clip", "zeroshot_suite",
                      "CLIP zero-shot classification of --images DIR (class folders) from class names and "
                      "prompt templates: top-1 / top-5"),
    "clip-retrieval": ("l3m.evals.clip", "retrieval_suite",
                       "CLIP image<->text retrieval on --pairs FILE.jsonl: recall@1/5/10 both ways"),
    "attentive-probe": ("l3m.evals.probe", "attentive_suite",
                        "AIM's attentive probe: train attention pooling + linear on the frozen trunk's features "
                        "of --train DIR, top-1 on --val DIR"),
    "linear-probe": ("l3m.evals.probe", "linear_suite",
                     "a linear probe on the frozen trunk's average-pooled features: --train DIR, --val DIR"),
    "perplexity": ("l3m.evals.perplexity", "perplexity_suite",
                   "perplexity of a language model on --text FILES (text or JSONL)"),
    "lm-eval": ("l3m.evals.lm_harness", "lm_eval_suite",
                "EleutherAI lm-eval tasks (--tasks a,b) on the model (pip install 'l3m[lm-eval]')"),
}

SuiteFn = Callable[[Any, Any], dict[str, float]]


def suite_function(name: str) -> SuiteFn:
    module, fn, _ = SUITES[name]
    return getattr(importlib.import_module(module), fn)

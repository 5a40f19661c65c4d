"""lm-eval's `generate_until` through l3m.generation's key/value cache gives the tokens of recomputing
the window every step: while the text fits the context from the cache, past it from the sliding window."""

from __future__ import annotations

import pytest
from eval_utils import save_weights
from helpers import ROOT

from l3m.evals.lm_harness import HarnessCore
from l3m.evals.perplexity import LanguageModel

LLM = ROOT / "examples" / "llm_bytes.l3m"
TINY_LLM = ["tokenizer=bytes", "vocab=256", "context=16", "dim=16", "text=20000"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from l3m.evals.model import load_model

    weights = save_weights(tmp_path_factory.mktemp("lm") / "w.safetensors", LLM, TINY_LLM)
    return LanguageModel(load_model(str(LLM), TINY_LLM, str(weights)))


class Uncached:
    """The same model without its cache (the reference)."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm

    def __getattr__(self, name: str):
        if name == "cached_greedy":
            raise AttributeError(name)
        return getattr(self.lm, name)


def test_the_tiny_llm_has_a_cached_greedy(lm):
    assert lm.cached_greedy() is not None


@pytest.mark.parametrize("context, max_new", [("def f(x", 5), ("import os, sys", 10)])  # the second passes 16
def test_cached_and_sliding_window_texts_agree(lm, context, max_new):
    request = [(context, {"until": ["\x00\x01"], "max_gen_toks": max_new})]
    cached = HarnessCore(lm).generate_until(request)
    assert cached == HarnessCore(Uncached(lm)).generate_until(request)


def test_a_stop_string_ends_the_cached_text(lm):
    full = HarnessCore(Uncached(lm)).generate_until([("abc", {"until": ["\x00\x01"], "max_gen_toks": 6})])[0]
    if len(full) < 2:
        pytest.skip("the random model ended at once")
    stop = full[1]
    want = full.split(stop, 1)[0]
    got = HarnessCore(lm).generate_until([("abc", {"until": [stop], "max_gen_toks": 6})])[0]
    assert got == want == HarnessCore(Uncached(lm)).generate_until([("abc", {"until": [stop],
                                                                                  "max_gen_toks": 6})])[0]

"""Perplexity and the lm-eval adapter's scoring: checked against log-likelihoods computed
independently (one forward, cross-entropy by hand)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from eval_utils import save_weights
from helpers import ROOT

from l3m.cli import main
from l3m.evals.lm_harness import HarnessCore, flatten
from l3m.evals.lm_scoring import continuation_loglikelihood, greedy_until, rolling_loglikelihood, windows

LLM = ROOT / "examples" / "llm_bytes.l3m"
TINY_LLM = ["tokenizer=bytes", "vocab=256", "context=16", "dim=16", "text=20000"]


class Bigram(torch.nn.Module):
    """A causal model whose logits at i depend on token i alone: exact answers are easy to compute."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x]

    def logp(self, prev: int, nxt: int) -> float:
        return float(F.log_softmax(self.table[prev].detach(), -1)[nxt])


class CharLM:
    """The `LanguageModel` interface on a Bigram over the letters a..k (EOS = 11)."""

    eos_id = 11

    def __init__(self, context: int = 4) -> None:
        self.model, self.context = Bigram(), context

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text if c.strip()]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i + ord("a")) for i in ids)

    @property
    def logits_fn(self):
        return self.model


def test_windows_score_every_token_but_the_first_once():
    for n, ctx, stride in [(1, 4, None), (2, 4, None), (10, 4, None), (10, 4, 2), (9, 3, 5)]:
        scored = [p for b, e, f in windows(n, ctx, stride) for p in range(f, e)]
        assert scored == list(range(1, n)), (n, ctx, stride)
        assert all(e - 1 - b <= ctx for b, e, _ in windows(n, ctx, stride))  # what the model reads


def test_rolling_loglikelihood_sums_each_tokens_log_probability():
    m = Bigram()
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    ll, n = rolling_loglikelihood(m, ids, context=4)
    assert n == len(ids) - 1
    assert ll == pytest.approx(sum(m.logp(a, b) for a, b in zip(ids, ids[1:])), abs=1e-4)


def test_continuation_loglikelihood_and_greedy():
    m = Bigram()
    ll, greedy = continuation_loglikelihood(m, [1, 2], [3, 4], max_len=8)
    assert ll == pytest.approx(m.logp(2, 3) + m.logp(3, 4), abs=1e-5)
    best = int(m.table[2].argmax())
    assert continuation_loglikelihood(m, [1, 2], [best], max_len=8)[1] is True
    assert greedy == (best == 3 and int(m.table[3].argmax()) == 4)
    new = greedy_until(m, [2], max_new=3, max_len=4)
    assert new[0] == best and len(new) <= 3


def test_harness_core_answers_the_three_requests():
    lm = CharLM()
    core = HarnessCore(lm, max_gen_toks=3)
    m = lm.model
    (ll, _), (ll_empty, _) = core.loglikelihood([("a b ", "c"), ("", "c")])
    assert ll == pytest.approx(m.logp(1, 2), abs=1e-5)  # the context's trailing space joins the continuation
    assert ll_empty == pytest.approx(m.logp(lm.eos_id, 2), abs=1e-5)  # an empty context conditions on EOS
    (rolled,) = core.loglikelihood_rolling(["abcdef"])
    ids = [lm.eos_id, 0, 1, 2, 3, 4, 5]
    assert rolled == pytest.approx(sum(m.logp(a, b) for a, b in zip(ids, ids[1:])), abs=1e-4)
    expected, last = [], 1  # greedy from "ab": follow each token's most likely successor, stop at EOS
    for _ in range(3):
        last = int(m.table[last].argmax())
        if last == lm.eos_id:
            break
        expected.append(last)
    assert core.generate_until([("ab", {"until": ["zz"], "max_gen_toks": 3})]) == [lm.decode(expected)]
    if expected:  # a stop string cuts the text before it
        assert core.generate_until([("ab", {"until": [lm.decode(expected[:1])]})]) == [""]


def test_flatten_keeps_numbers_under_task_names():
    got = flatten({"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "t", "bad": float("nan")}})
    assert got == {"t/acc": 0.5, "t/acc_stderr": 0.1}


def test_lm_eval_adapter_wraps_the_core():
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from l3m.evals.lm_harness import lm_class

    core = HarnessCore(CharLM(), max_gen_toks=2)
    lm = lm_class()(core=core)
    req = Instance(request_type="loglikelihood", doc={}, arguments=("a b ", "c"), idx=0)
    assert lm.loglikelihood([req]) == core.loglikelihood([("a b ", "c")])


def test_perplexity_is_exp_of_the_mean_nll(tmp_path, capsys):
    from l3m.evals.model import load_model

    weights = save_weights(tmp_path / "w.safetensors", LLM, TINY_LLM)
    text = "def f(x):\n    return x\n"  # 23 bytes: more than one 16-token context
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "pass"}) + "\n")
    code = main(["eval", str(LLM), *TINY_LLM, "--checkpoint", str(weights), "--suite", "perplexity",
                 "--text", str(tmp_path / "b.jsonl"), str(tmp_path / "a.txt"), "--json", "--stride", "4"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)["results"]
    # independently: one forward per token; each token scored with the longest
    # context the windows of stride 4 give it (byte tokenizer: no EOS, the first byte is not scored)
    m = load_model(str(LLM), TINY_LLM, str(weights))
    nll, count = 0.0, 0
    for doc in ["pass", text]:
        ids = list(doc.encode())
        for i in range(1, len(ids)):
            begin = max(0, min(len(ids), 1 + 4 * math.ceil(i / 4)) - 17)  # the window that scores position i
            x = torch.tensor([ids[begin:i]])
            logits = m.run({"tokens": x})["logits"][0, -1]
            nll -= float(F.log_softmax(logits.float(), -1)[ids[i]])
            count += 1
    assert r["tokens"] == count == 3 + 22 and r["documents"] == 2
    assert r["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert r["nll"] == pytest.approx(nll / count, rel=1e-4)


def test_perplexity_bad_input(tmp_path, capsys):
    weights = save_weights(tmp_path / "w.safetensors", LLM, TINY_LLM)
    base = ["eval", str(LLM), *TINY_LLM, "--checkpoint", str(weights), "--suite", "perplexity"]
    assert main(base) == 2 and "--text" in capsys.readouterr().err
    (tmp_path / "x.jsonl").write_text('{"body": "no text field"}\n')
    assert main([*base, "--text", str(tmp_path / "x.jsonl")]) == 2
    assert "no string field 'text'" in capsys.readouterr().err


def test_lm_eval_suite_runs_a_local_task(tmp_path, capsys):
    pytest.importorskip("lm_eval.evaluator")  # the `lm-eval` extra
    weights = save_weights(tmp_path / "w.safetensors", LLM, TINY_LLM)
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"q": q, "choices": c, "label": 0}) + "\n"
                            for q, c in [("import", [" os", " ##"]), ("for i in", [" range", " ))"])]))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mc.yaml").write_text(
        "task: l3m_test_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n")
    code = main(["eval", str(LLM), *TINY_LLM, "--checkpoint", str(weights), "--suite", "lm-eval",
                 "--tasks", "l3m_test_mc", "--task-dir", str(tmp_path / "tasks"), "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert 0.0 <= r["l3m_test_mc/acc"] <= 1.0


def test_lm_eval_suite_without_the_harness_says_how_to_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    weights = save_weights(tmp_path / "w.safetensors", LLM, TINY_LLM)
    code = main(["eval", str(LLM), *TINY_LLM, "--checkpoint", str(weights), "--suite", "lm-eval", "--tasks", "x"])
    assert code == 2 and "pip install 'l3m[lm-eval]'" in capsys.readouterr().err


class _Touch:
    """Unpickling this would create `path`: the proof that code ran."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_a_pickled_weights_file_is_refused_without_running_it(tmp_path, capsys):
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save({"w": _Touch(marker)}, evil)
    (tmp_path / "a.txt").write_text("pass\n")
    code = main(["eval", str(LLM), *TINY_LLM, "--checkpoint", str(evil), "--suite", "perplexity",
                 "--text", str(tmp_path / "a.txt")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()

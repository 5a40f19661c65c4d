"""Scoring text with a causal language model: what perplexity and the lm-eval adapter share.

Everything here works on token ids and a `logits_fn` (long `[1, T]` -> float `[1, T, V]`, logits
at position i predicting token i + 1), so it is testable with any tiny model and needs neither
lm-eval nor a tokenizer. Sequences longer than the model's context are scored in windows: the
model reads up to `context` tokens of each and predicts the next of each, scoring only the tokens no
earlier window scored, with as much preceding text as fits before them (`stride` < context makes
windows overlap, so that later tokens keep more of their context).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _logprobs(logits_fn: LogitsFn, ids: Sequence[int]) -> torch.Tensor:
    """[len(ids) - 1, V]: log-probabilities of the token after each position but the last (the
    model reads `ids[:-1]`)."""
    x = torch.tensor([list(ids[:-1])], dtype=torch.long)
    return F.log_softmax(logits_fn(x)[0].float(), dim=-1)


def windows(n: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """`(begin, end, first_scored)`: the model reads positions [begin, end - 1) and the targets at
    positions first_scored..end-1 are scored (position 0 has no context and is never scored)."""
    if context < 1:
        raise ValueError(f"the context must hold at least one token, got {context}")
    stride = min(stride, context) if stride else context
    out, scored = [], 1
    while scored < n:
        end = min(n, scored + stride)
        begin = max(0, end - 1 - context)
        out.append((begin, end, scored))
        scored = end
    return out


def rolling_loglikelihood(logits_fn: LogitsFn, ids: Sequence[int], context: int,
                          stride: int | None = None) -> tuple[float, int]:
    """(sum of log p(ids[i] | ids[:i]) for i >= 1, number of tokens scored)."""
    total, count = 0.0, 0
    for begin, end, first in windows(len(ids), context, stride):
        lp = _logprobs(logits_fn, ids[begin:end])
        targets = torch.tensor(ids[begin + 1:end])
        picked = lp.gather(1, targets[:, None])[:, 0]
        keep = picked[first - begin - 1:]
        total += float(keep.sum())
        count += keep.numel()
    return total, count


def continuation_loglikelihood(logits_fn: LogitsFn, context_ids: Sequence[int], continuation_ids: Sequence[int],
                               max_len: int) -> tuple[float, bool]:
    """(log p(continuation | context), whether greedy decoding would produce the continuation):
    lm-eval's `loglikelihood`. The context is cut from the left so that the model reads `max_len` tokens."""
    if not continuation_ids:
        raise ValueError("the continuation has no tokens")
    whole = (list(context_ids) + list(continuation_ids))[-(max_len + 1):]
    n = len(continuation_ids)
    if len(whole) < 2:
        raise ValueError("nothing to condition on: give a context or a longer continuation")
    lp = _logprobs(logits_fn, whole)[-n:]
    targets = torch.tensor(whole[-n:])
    ll = float(lp.gather(1, targets[:, None]).sum())
    greedy = bool((lp.argmax(dim=-1) == targets).all())
    return ll, greedy


def score_pairs(logits_fn: LogitsFn, encode: Callable[[str], list[int]], pairs: Sequence[tuple[str, str]],
                max_len: int, prefix: Sequence[int] = ()) -> list[tuple[float, bool]]:
    """`continuation_loglikelihood` of each (context, continuation) string pair. The context is
    encoded with `prefix` before it (e.g. EOS when the context is empty); whitespace at the end of
    the context moves to the continuation, as lm-eval does, so they tokenize as one text would."""
    out = []
    for context, continuation in pairs:
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        out.append(continuation_loglikelihood(logits_fn, list(prefix) + encode(stripped), encode(continuation),
                                              max_len))
    return out


# (prompt, n, should_stop) -> (at most n greedy new ids, whether should_stop ended them): a decoder
# with a key/value cache (`LanguageModel.cached_greedy`) that runs the prompt once, then one token a step.
CachedGreedy = Callable[[list[int], int, Callable[[list[int]], bool]], tuple[list[int], bool]]


@torch.no_grad()
def greedy_until(logits_fn: LogitsFn, prompt: Sequence[int], max_new: int, max_len: int,
                 stop_ids: Sequence[int] = (), should_stop: Callable[[list[int]], bool] | None = None,
                 cached: CachedGreedy | None = None) -> list[int]:
    """The greedily decoded new ids, recomputing the last `max_len` tokens each step. Stops at a
    stop id (left out), or once `should_stop(new ids)` holds (e.g. a stop string was produced).
    With `cached`, the tokens whose window is still the whole text (until it reaches `max_len`)
    come from the cached decoder, the same tokens without recomputing the window every step; any
    later ones from the sliding window as before."""
    if not prompt:
        raise ValueError("greedy decoding needs a prompt of at least one token")
    ids, new = list(prompt), []
    if cached is not None and len(ids) <= max_len and max_new > 0:
        def ends(got: list[int]) -> bool:
            return got[-1] in stop_ids or (should_stop is not None and should_stop(got))

        got, stopped = cached(ids, min(max_new, max_len - len(ids) + 1), ends)
        if got and got[-1] in stop_ids:
            return got[:-1]
        if stopped:
            return got
        ids, new = ids + got, list(got)
    for _ in range(max_new - len(new)):
        window = ids[-max_len:]
        logits = logits_fn(torch.tensor([window], dtype=torch.long))[0, len(window) - 1]
        nxt = int(logits.argmax())
        if nxt in stop_ids:
            break
        ids.append(nxt)
        new.append(nxt)
        if should_stop is not None and should_stop(new):
            break
    return new

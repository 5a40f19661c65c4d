"""Perplexity of a language model on text the user points to: exp(mean negative log-likelihood).

Each document (a text file, or one JSONL line's field) is tokenized with the program's tokenizer,
put after EOS and followed by EOS as training packs documents, and every token after the leading
EOS is scored in context windows (`lm_scoring.rolling_loglikelihood`). The mean is over all
tokens of all documents; bits per byte divide the same total by the documents' UTF-8 bytes.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from l3m.evals.errors import EvalInputError
from l3m.evals.lm_scoring import CachedGreedy, LogitsFn, rolling_loglikelihood
from l3m.evals.model import EvalModel

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".py")


def read_documents(paths: list[str], field: str = "text") -> list[str]:
    """The documents of text files, JSONL files (`field` of each line) and folders of them."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise EvalInputError(f"no such text file or folder: {p}")
    docs: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EvalInputError(f"cannot read {f}: {e}") from None
        if f.suffix != ".jsonl":
            docs.append(text)
            continue
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise EvalInputError(f"{f}:{lineno}: not valid JSON") from None
            value = rec.get(field) if isinstance(rec, dict) else None
            if not isinstance(value, str):
                raise EvalInputError(f"{f}:{lineno}: no string field '{field}' (choose it with --text-field)")
            docs.append(value)
    docs = [d for d in docs if d]
    if not docs:
        raise EvalInputError("the text files hold no text")
    return docs


class LanguageModel:
    """An l3m causal language model as `lm_scoring` sees it: ids in, logits out, its tokenizer."""

    def __init__(self, m: EvalModel) -> None:
        self.m = m
        src = next((s for s in m.sources.values() if isinstance(getattr(s, "tokenizer", None), str)
                    and isinstance(getattr(s, "seq_len", None), int)), None)
        if src is None:
            raise EvalInputError("the program has no text source to take the tokenizer and context length from")
        from l3m.data.tokenizers import load_tokenizer

        try:
            self.tokenizer = load_tokenizer(src.tokenizer, getattr(src, "token_policy", "stream") or "stream")
        except (OSError, ValueError) as e:
            raise EvalInputError(f"cannot load the program's tokenizer: {e}") from None
        self.context = src.seq_len
        self.token_key, self.logits_key = self._keys(m)
        self.extra = [k for k in m.model.input_keys if k != self.token_key]

    @staticmethod
    def _keys(m: EvalModel) -> tuple[str, str]:
        try:
            from l3m.generation.decoder import NotADecoder, find_decoder
        except ImportError:  # l3m.generation not there: the source's and the loss's keys
            ports = next((p for p in m.source_ports().values() if "tokens" in p), {})
            logits = m.loss_input_key("logits")
            if not logits:
                raise EvalInputError("cannot tell which key holds the logits (no loss reads `logits`)") from None
            return ports.get("tokens", "tokens"), logits
        try:
            d = find_decoder(m.model)
        except NotADecoder as e:
            raise EvalInputError(str(e)) from None
        return d.token_key, d.logits_key

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        inputs: dict[str, Any] = {self.token_key: x}
        for key in self.extra:  # e.g. packed documents' segment ids: one document
            if key == "segments":
                inputs[key] = torch.zeros_like(x)
        d = self.m.run(inputs)
        if self.logits_key not in d:
            raise EvalInputError(f"the model cannot compute '{self.logits_key}' from '{self.token_key}' alone "
                                 f"(it reads {', '.join(self.m.model.input_keys)})")
        return d[self.logits_key].float().cpu()

    @property
    def logits_fn(self) -> LogitsFn:
        return self.logits

    def cached_greedy(self) -> CachedGreedy | None:
        """Greedy decoding through l3m.generation's key/value cache (under the run's precision, as
        `logits` runs), or None when the model reads more than its tokens or the cache cannot serve it."""
        try:
            from l3m.generation.decode import Settings, decode_cached
            from l3m.generation.decoder import NotADecoder, find_decoder
        except ImportError:
            return None
        if self.extra:
            return None
        try:
            decoder = find_decoder(self.m.model)
        except NotADecoder:
            return None
        if not decoder.cached:
            return None

        def run(prompt: list[int], n: int, should_stop: Callable[[list[int]], bool]) -> tuple[list[int], bool]:
            if decoder.positions is not None and len(prompt) + n - 1 > decoder.positions:
                return [], False  # past the position table: the sliding window decodes it all
            self.m.model.eval()
            with torch.no_grad(), self.m.session.precision.autocast():
                out = decode_cached(decoder, [prompt], Settings(max_new_tokens=n), stop=lambda _, ids: should_stop(ids))
            return out.ids[0], out.stopped[0]

        return run


def document_ids(lm: LanguageModel, doc: str) -> list[int]:
    """EOS + ids + EOS when the tokenizer has EOS (as training packs documents), else the ids."""
    eos = [lm.eos_id] if lm.eos_id is not None else []
    return eos + lm.encode(doc) + eos


def perplexity_suite(m: EvalModel, args: argparse.Namespace) -> dict[str, float]:
    if not args.text:
        raise EvalInputError("--suite perplexity needs --text FILE... (text files, JSONL or folders)")
    lm = LanguageModel(m)
    docs = read_documents(args.text, args.text_field)
    total, count = 0.0, 0
    for doc in docs:
        ll, n = rolling_loglikelihood(lm.logits_fn, document_ids(lm, doc), lm.context, args.stride)
        total, count = total + ll, count + n
    if count == 0:
        raise EvalInputError("the documents hold no token to score")
    nll = -total / count
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"perplexity": math.exp(nll), "nll": nll, "bits_per_byte": -total / math.log(2) / n_bytes,
            "tokens": count, "documents": len(docs)}

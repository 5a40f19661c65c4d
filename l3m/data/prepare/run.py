"""`l3m data prepare`: plan the job, claim (or resume) the output directory, tokenize, write the manifest.

Resuming: the job (tokenizer, files with sizes and mtimes, options) is written to DIR/prepare.json
before any shard (and kept). A re-run with the same job skips the shards that are finished (each one was
renamed into place after an fsync) and writes the rest; the manifest comes last. A re-run with
another job into the same directory is refused. The result never depends on the worker count.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from l3m.data.prepare.format import (
    INTENT,
    MANIFEST,
    ManifestError,
    canonical,
    job_id,
    read_json,
)
from l3m.data.prepare.plan import (
    PrepareError,
    Unit,
    corpus_files,
    default_workers,
    make_job,
    make_units,
    open_tokenizer,
)
from l3m.data.prepare.progress import Progress
from l3m.data.prepare.work import finished_shard, init_worker, write_shard
from l3m.durable import fsync_dir, write_atomic


@dataclass
class Result:
    manifest: dict
    new_tokens: int  # tokenized by this run (skipped shards not counted)
    seconds: float
    skipped: int  # shards an earlier run had finished
    already: bool  # the directory was complete already

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def prepare(tokenizer: str, output: str, corpus: list[str], *, workers: int = 0, text_key: str = "text",
            shard_bytes: int = 0, pattern: str = "**/*", progress: bool = True) -> Result:
    """Tokenize CORPUS into token shards in `output` (see the module docstring).

    `workers` 0: one per CPU; `shard_bytes` 0: about 64 shards, at most 64 MiB of text each.
    """
    if shard_bytes < 0:
        raise PrepareError(f"--shard-bytes must be positive (or 0: from the corpus size), got {shard_bytes}", 2)
    start = time.perf_counter()
    tok = open_tokenizer(tokenizer)
    files = corpus_files(corpus, pattern)
    job = make_job(tokenizer, tok, files, text_key, shard_bytes)
    out = Path(output).expanduser()
    if _claim(out, job):
        return Result(read_json(out / MANIFEST, "manifest"), 0, time.perf_counter() - start, 0, True)
    for stale in out.glob("*.tmp"):  # left by an interrupted run
        stale.unlink()
    units = make_units(job)
    shards: list[dict | None] = [finished_shard(out, i, job["dtype"]) for i in range(len(units))]
    todo = [i for i, s in enumerate(shards) if s is None]
    skipped = len(units) - len(todo)
    bar = Progress(sum(u.nbytes for u in units), enabled=progress)
    bar.advance(sum(units[i].nbytes for i, s in enumerate(shards) if s is not None), 0)
    workers = min(workers or default_workers(), max(len(todo), 1))
    try:
        for i, shard in _run(job, units, todo, out, workers):
            shards[i] = shard
            bar.advance(units[i].nbytes, shard["tokens"])
    finally:
        bar.close()
    new_tokens = sum(shards[i]["tokens"] for i in todo)
    manifest = dict(job, shards=shards, tokens=sum(s["tokens"] for s in shards),
                    documents=sum(s["documents"] for s in shards))
    fsync_dir(out)
    write_atomic(out / MANIFEST, canonical(manifest))
    fsync_dir(out)
    return Result(manifest, new_tokens, time.perf_counter() - start, skipped, False)


def _run(job: dict, units: list[Unit], todo: list[int], out: Path, workers: int):
    """(index, shard counts) of every unit in `todo`, as they finish."""
    if workers <= 1:
        for i in todo:
            yield i, write_shard(job, i, units[i], str(out))
        return
    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker)
    try:
        futures = {pool.submit(write_shard, job, i, units[i], str(out)): i for i in todo}
        for fut in cf.as_completed(futures):
            yield futures[fut], fut.result()
    except cf.process.BrokenProcessPool:
        raise PrepareError("a tokenizer worker process died (out of memory?); re-run the same command to "
                           "resume", 1) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _claim(out: Path, job: dict) -> bool:
    """Make `out` this job's directory. True when it already holds this job's finished shards.

    Raises PrepareError (exit 2) when it holds another job's shards, or files of something else.
    """
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--output {str(out)!r} exists and is not a directory", 2)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrepareError(f"cannot create --output {str(out)!r}: {e.strerror or e}", 2) from None
    for name, done in ((MANIFEST, True), (INTENT, False)):  # the manifest says more when there is one
        path = out / name
        if not path.is_file():
            continue
        try:
            old = read_json(path, "manifest" if done else "unfinished prepare's job")
        except ManifestError as e:
            raise PrepareError(f"{e}; delete {str(out)!r} or choose another --output", 2) from None
        old_job = {k: old.get(k) for k in job}
        if job_id(old_job) != job_id(job):
            raise PrepareError(f"{str(out)!r} holds token shards of {'a' if done else 'an unfinished'} prepare with "
                               f"other arguments ({_difference(old_job, job)}); choose another --output or delete it",
                               2)
        return done
    if any(out.iterdir()):
        raise PrepareError(f"--output {str(out)!r} is not empty and holds no token shards; choose an empty or "
                           "new directory", 2)
    write_atomic(out / INTENT, canonical(job))
    fsync_dir(out)
    return False


def _difference(old: dict, new: dict) -> str:
    """What changed between two jobs, in words."""
    said = []
    for key in new:
        if old.get(key) == new[key]:
            continue
        if key == "tokenizer":
            o, n = old.get(key) or {}, new[key]
            same_name = o.get("name") == n["name"]
            said.append(f"tokenizer {o.get('name')!r}{' (another file)' if same_name else ''} -> {n['name']!r}")
        elif key == "sources":
            o = {s["path"]: s for s in old.get(key) or []}
            n = {s["path"]: s for s in new[key]}
            gone, added = sorted(set(o) - set(n)), sorted(set(n) - set(o))
            changed = sorted(p for p in set(o) & set(n) if o[p] != n[p])
            bits = [f"{what} {len(ps)} file(s), e.g. {ps[0]}" for what, ps in
                    (("without", gone), ("with new", added), ("with changed", changed)) if ps]
            said.append("the corpus changed: " + "; ".join(bits or ["its file order"]))
        else:
            said.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
    return ", ".join(said) or "unknown difference"


def summary(result: Result, output: str) -> str:
    m = result.manifest
    head = (f"{len(m['shards'])} shards, {m['tokens']:,} tokens, {m['documents']:,} documents "
            f"({m['dtype']}, vocabulary {m['tokenizer']['vocab_size']}) in {output}")
    if result.already:
        return f"{head}: already prepared, nothing to do"
    resumed = f", {result.skipped} shards kept from an interrupted run" if result.skipped else ""
    return f"{head}; {result.tokens_per_s:,.0f} tokens/s ({result.seconds:.1f} s{resumed})"


def print_error(e: PrepareError) -> None:
    print(f"l3m data prepare: {e}", file=sys.stderr)

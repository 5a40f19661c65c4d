"""`l3m data prepare` and `TokenShards`: round trip, dtype, resume, refusal, windows, segments, loader resume."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from l3m.cli import main
from l3m.data import build_loader
from l3m.data.errors import DataError
from l3m.data.prepare.format import ManifestError, dtype_for, read_manifest
from l3m.data.prepare.plan import PrepareError
from l3m.data.prepare.run import prepare
from l3m.data.sources import TokenShards
from l3m.data.tokenizers import load_tokenizer

TOK = "stdlib_bpe_2k"
DOCS = ["def f(x):\n    return x + 1\n", "The quick brown fox.", "", "import os\nprint(os.sep)\n",
        "naïve café — ünïcödé", "class A:\n    pass\n" * 3]


def write_corpus(root: Path) -> list[str]:
    """A folder with two text files and a JSONL file (with a blank line); returns the documents in prepare order."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)]
    (root / "a.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("a text file is one document\nwith two lines\n", encoding="utf-8")
    (root / "c.txt").write_text("x = [1, 2, 3]\n", encoding="utf-8")
    (root / ".hidden").write_text("never read", encoding="utf-8")
    return [d for d in DOCS if d] + [(root / "b.txt").read_text(), (root / "c.txt").read_text()]


def expected_stream(docs: list[str], tok_name: str = TOK) -> tuple[np.ndarray, list[int]]:
    tok = load_tokenizer(tok_name)
    ids, ends = [], []
    for d in docs:
        ids += tok.encode(d) + ([tok.eos_id] if tok.eos_id is not None else [])
        ends.append(len(ids))
    return np.asarray(ids, dtype=np.int64), ends


def shard_stream(out: Path) -> tuple[np.ndarray, list[int]]:
    m = read_manifest(out)
    ids, ends, base = [], [], 0
    for s in m["shards"]:
        a = np.fromfile(out / s["file"], dtype=np.dtype("<u2" if m["dtype"] == "uint16" else "<u4"))
        ids.append(a.astype(np.int64))
        ends += [base + int(e) for e in np.load(out / s["docs"])]
        base += len(a)
    return np.concatenate(ids), ends


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_prepare_round_trips_text_and_jsonl(tmp_path):
    docs = write_corpus(tmp_path / "corpus")
    r = prepare(TOK, str(tmp_path / "out"), [str(tmp_path / "corpus")], workers=1, shard_bytes=40, progress=False)
    m = r.manifest
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 2048 and m["tokenizer"]["eos_id"] == 2
    assert len(m["shards"]) > 2  # the JSONL file is cut at line starts, the text files grouped
    assert m["documents"] == len(docs) == sum(s["documents"] for s in m["shards"])
    assert [Path(s["path"]).name for s in m["sources"]] == ["a.jsonl", "b.txt", "c.txt"]
    want, want_ends = expected_stream(docs)
    got, got_ends = shard_stream(tmp_path / "out")
    assert np.array_equal(got, want) and got_ends == want_ends and m["tokens"] == len(want)
    assert load_tokenizer(TOK).decode(got[: want_ends[0]].tolist()).startswith(DOCS[0])


def test_dtype_follows_the_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    assert dtype_for(256) == dtype_for(65536) == "uint16" and dtype_for(65537) == "uint32"
    vocab = {f"w{i}": i for i in range(70_000)} | {"<unk>": 70_000, "</s>": 70_001}
    big = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    big.save(str(tmp_path / "big.json"))
    (tmp_path / "t.txt").write_text("w69999 w3 w65536")
    m = prepare(str(tmp_path / "big.json"), str(tmp_path / "o32"), [str(tmp_path / "t.txt")], workers=1,
                progress=False).manifest
    assert m["dtype"] == "uint32"
    assert np.fromfile(tmp_path / "o32" / m["shards"][0]["file"], dtype="<u4").tolist() == [69999, 3, 65536, 70_001]
    m = prepare("bytes", str(tmp_path / "o8"), [str(tmp_path / "t.txt")], workers=1, progress=False).manifest
    assert m["dtype"] == "uint16" and m["tokenizer"]["eos_id"] is None and m["tokens"] == len("w69999 w3 w65536")


def test_resume_after_losing_the_manifest_and_a_shard_is_byte_identical(tmp_path):
    write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    prepare(TOK, str(out), [str(tmp_path / "corpus")], workers=1, shard_bytes=40, progress=False)
    whole = snapshot(out)
    (out / "manifest.json").unlink()
    (out / "shard_000001.bin").unlink()
    (out / "shard_000002.docs.npy").unlink()  # its .bin stays: renamed, but the shard never finished
    (out / "shard_000003.bin.tmp").write_bytes(b"\0" * 7)  # what kill -9 leaves mid-write
    r = prepare(TOK, str(out), [str(tmp_path / "corpus")], workers=1, shard_bytes=40, progress=False)
    assert r.skipped == len(r.manifest["shards"]) - 2
    assert snapshot(out) == whole
    again = prepare(TOK, str(out), [str(tmp_path / "corpus")], workers=1, shard_bytes=40, progress=False)
    assert again.already and snapshot(out) == whole


@pytest.mark.slow
def test_kill_9_mid_prepare_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Also the only test of the worker pool (spawned processes, ~10 s of imports on a busy machine)."""
    from l3m.data import embedded

    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        size = 0
        for p in embedded.stdlib_files():
            text = p.read_text(encoding="utf-8", errors="replace")
            f.write(json.dumps({"text": text}) + "\n")
            size += len(text)
            if size > 600_000:
                break
    args = ["--tokenizer", TOK, "--shard-bytes", "8192", str(corpus)]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "l3m", "data", "prepare", "--workers", "2", "-o", str(out), *args],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*.docs.npy"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the workers too
    proc.wait()
    assert not (out / "manifest.json").exists(), "the prepare finished before it could be killed"
    assert (out / "prepare.json").exists() and list(out.glob("*.docs.npy"))
    assert main(["data", "prepare", "--workers", "1", "--no-progress", "-o", str(out), *args]) == 0
    fresh = tmp_path / "fresh"
    assert main(["data", "prepare", "--workers", "1", "--no-progress", "-o", str(fresh), *args]) == 0
    assert snapshot(out) == snapshot(fresh)
    assert not list(out.glob("*.tmp"))


def test_a_different_rerun_into_the_same_directory_is_refused(tmp_path, capsys):
    write_corpus(tmp_path / "corpus")
    out = str(tmp_path / "out")
    assert main(["data", "prepare", "-t", TOK, "-o", out, "-j", "1", "--no-progress", str(tmp_path / "corpus")]) == 0
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    assert main(["data", "prepare", "-t", "bytes", "-o", out, "-j", "1", str(tmp_path / "corpus")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other arguments" in err and "tokenizer 'stdlib_bpe_2k'" in err
    (tmp_path / "corpus" / "c.txt").write_text("changed")
    with pytest.raises(PrepareError, match="the corpus changed: with changed 1 file") as e:
        prepare(TOK, out, [str(tmp_path / "corpus")], workers=1, progress=False)
    assert e.value.code == 2
    (tmp_path / "out" / "manifest.json").unlink()  # an unfinished prepare is guarded by its job too
    with pytest.raises(PrepareError, match="unfinished prepare with other arguments .*text_key"):
        prepare(TOK, out, [str(tmp_path / "corpus")], workers=1, text_key="body", progress=False)
    assert snapshot(tmp_path / "out") == {k: v for k, v in before.items() if k != "manifest.json"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not empty and holds no token shards"):
        prepare(TOK, str(tmp_path / "other"), [str(tmp_path / "corpus")], workers=1, progress=False)


@pytest.mark.parametrize(("line", "code", "message"), [
    ('{"text": "ok"}\n{"text": "broken\n', 1, r"bad.jsonl:2: \(byte 15\) not valid JSON"),
    ('{"text": "ok"}\n\n{"body": "x"}\n', 1, r"bad.jsonl:3: \(byte 16\) expected a string field 'text' \(no such"),
    ('["a list"]\n', 1, r"bad.jsonl:1: \(byte 0\) expected a JSON object"),
])
def test_bad_jsonl_names_the_file_line_and_byte(tmp_path, capsys, line, code, message):
    (tmp_path / "bad.jsonl").write_text(line)
    assert main(["data", "prepare", "-t", "bytes", "-o", str(tmp_path / "o"), "-j", "1",
                 str(tmp_path / "bad.jsonl")]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_usage_errors_exit_2_in_one_line(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("x")
    for argv in (["-t", TOK, "-o", str(tmp_path / "o"), str(tmp_path / "missing.txt")],
                 ["-t", "no_such_tokenizer", "-o", str(tmp_path / "o"), str(tmp_path / "t.txt")]):
        assert main(["data", "prepare", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert main(["data", "prepare", "-t", "bytes", "-o", str(tmp_path / "o2"), str(tmp_path / "latin1.txt")]) == 1
    assert "latin1.txt: byte 3: not UTF-8" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- TokenShards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, np.ndarray, list[int]]:
    tmp = tmp_path_factory.mktemp("shards")
    docs = write_corpus(tmp / "corpus")
    prepare(TOK, str(tmp / "out"), [str(tmp / "corpus")], workers=1, shard_bytes=40, progress=False)
    stream, ends = expected_stream(docs)
    return tmp / "out", stream, ends


def test_windows_pack_the_stream_across_shards(shards):
    out, stream, ends = shards
    m = read_manifest(out)
    bounds = np.cumsum([s["tokens"] for s in m["shards"]])[:-1]
    src = TokenShards(str(out), seq_len=7, batch_size=2, shuffle=False)
    assert len(src) == (len(stream) - 1) // 7
    crossed = False
    for i in range(len(src)):
        s = src[i]
        window = stream[i * 7 : i * 7 + 8]
        assert s["tokens"].dtype == torch.long and s["tokens"].tolist() == window[:-1].tolist()
        assert s["targets"].tolist() == window[1:].tolist()
        crossed |= any(i * 7 < b < i * 7 + 8 for b in bounds)
    assert crossed and set(src.spec()) == {"tokens", "targets"}
    with pytest.raises(IndexError):
        src[len(src)]


def test_segments_number_the_documents_of_a_window(shards):
    out, stream, ends = shards
    src = TokenShards(str(out), seq_len=9, batch_size=2, segments=True)
    assert src.spec()["segments"] == ((9,), torch.long)
    doc_of = np.searchsorted(np.asarray(ends), np.arange(len(stream)), side="right")
    for i in range(len(src)):
        seg = src[i]["segments"]
        want = doc_of[i * 9 : i * 9 + 9] - doc_of[i * 9]
        assert seg.tolist() == want.tolist()
        eos_at = [j for j in range(9) if stream[i * 9 + j] == 2]
        for j in eos_at:  # an EOS belongs to the document it closes
            assert j == 0 or seg[j] == seg[j - 1]
    assert any(src[i]["segments"].max() > 0 for i in range(len(src)))


def test_splits_and_memory_maps(shards):
    out, stream, _ = shards
    train = TokenShards(str(out), seq_len=5, batch_size=1, test_fraction=0.25)
    test = TokenShards(str(out), seq_len=5, batch_size=1, split="test", test_fraction=0.25)
    cut = int(len(stream) * 0.75)
    assert len(train) == (cut - 1) // 5 and len(test) == (len(stream) - cut - 1) // 5
    assert test[0]["tokens"].tolist() == stream[cut : cut + 5].tolist()
    assert train[3]["tokens"].tolist() == stream[15:20].tolist()
    assert all(isinstance(a, np.memmap) for a in train._maps.values()) and train._maps  # safe: the test pickles its own object
    clone = pickle.loads(pickle.dumps(train))  # what a spawned loader worker receives: no token data
    assert clone._maps == {} and clone[3]["tokens"].tolist() == train[3]["tokens"].tolist()
    assert len(pickle.dumps(train)) < 2000
    with pytest.raises(ValueError, match="test_fraction above 0"):
        TokenShards(str(out), split="test")


def test_missing_or_damaged_directories_say_so(shards, tmp_path):
    out, _, _ = shards
    with pytest.raises(FileNotFoundError, match="no token-shard directory"):
        len(TokenShards(str(tmp_path / "nope"), seq_len=4))
    src = TokenShards(str(tmp_path / "nope"), seq_len=4, segments=True)
    assert set(src.spec()) == {"tokens", "targets", "segments"}  # planning needs no data
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    with open(copy / "shard_000001.bin", "r+b") as f:
        f.seek(4)
        f.write(b"\xff\xff")  # id 65535 in a vocabulary of 2048
    bits = TokenShards(str(copy), seq_len=4, shuffle=False)
    with pytest.raises(DataError, match=r"shard_000001.bin@4: token id 65535 is outside the vocabulary of 2048"):
        [bits[i] for i in range(len(bits))]
    with open(copy / "shard_000001.bin", "r+b") as f:
        f.truncate(3)
    with pytest.raises(ManifestError, match="shard_000001.bin holds 3 bytes.*truncated or corrupt"):
        len(TokenShards(str(copy), seq_len=4))
    (copy / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(ManifestError, match="not a token-shard manifest"):
        len(TokenShards(str(copy), seq_len=4))
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="interrupted: re-run the same `l3m data prepare`"):
        len(TokenShards(str(copy), seq_len=4))


def test_loader_with_two_workers_resumes_exactly(shards):
    out, _, _ = shards
    src = TokenShards(str(out), seq_len=4, batch_size=2, segments=True)

    def batches(loader, n):
        return [next(loader) for _ in range(n)]

    full = build_loader(src, seed=3, num_workers=2)
    first = batches(full, 3)
    state = full.state_dict()
    rest = batches(full, 4)
    full.close()
    resumed = build_loader(TokenShards(str(out), seq_len=4, batch_size=2, segments=True), seed=3, num_workers=2)
    resumed.load_state_dict(state)
    again = batches(resumed, 4)
    resumed.close()
    assert len(first) == 3
    for a, b in zip(rest, again):
        assert set(a) == {"tokens", "targets", "segments"}
        for k in a:
            assert torch.equal(a[k], b[k])


def test_shard_size_follows_the_corpus_not_the_workers():
    from l3m.data.prepare.plan import auto_shard_bytes

    assert auto_shard_bytes(10) == 1 << 20
    assert auto_shard_bytes(640 << 20) == 10 << 20  # about 64 shards: work for many processes
    assert auto_shard_bytes(1 << 40) == 64 << 20


def test_memory_maps_are_renewed_and_reads_stay_right(shards, monkeypatch):
    import l3m.data.sources.shards as mod

    out, stream, ends = shards
    monkeypatch.setattr(mod, "REMAP_EVERY", 3)
    src = TokenShards(str(out), seq_len=6, batch_size=1, segments=True)
    doc_of = np.searchsorted(np.asarray(ends), np.arange(len(stream)), side="right")
    for i in [0, 5, 1, 7, 2, 9, 3, 4, 8, 6] * 2:
        s = src[i]
        assert s["tokens"].tolist() == stream[i * 6 : i * 6 + 6].tolist()
        assert s["segments"].tolist() == (doc_of[i * 6 : i * 6 + 6] - doc_of[i * 6]).tolist()
        if src._reads % 3 == 0:  # renewed on this read: what the reads before touched is let go
            assert len(src._maps) <= 2

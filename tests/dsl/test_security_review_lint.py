"""Second-look attacks on what `l3m lint` reads from a stranger's repository."""

from __future__ import annotations

import os

import pytest

from l3m.data.tokenizers import TokenizerError, load_tokenizer

HEAD = "l3m 1\n"
LLM = """data { train: TextBytes(seq_len = 8, batch_size = 2, tokenizer = "TOK") -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""


@pytest.fixture
def device_link(tmp_path):
    """A committed symlink `tok.json -> /dev/null`: git keeps symlinks, so a pull request can hold
    one. Pointed at /dev/zero (or a FIFO) it would make lint read forever; /dev/null keeps the
    test itself safe, and is refused for the same reason (not a regular file)."""
    link = tmp_path / "tok.json"
    os.symlink("/dev/null", link)
    return link


def test_a_tokenizer_that_is_not_a_regular_file_is_refused_unread(device_link):
    with pytest.raises(TokenizerError, match="not a regular file"):
        load_tokenizer(str(device_link))


def test_lint_reports_it_as_a_diagnostic(device_link, compile_text):
    compiled = compile_text(HEAD + LLM.replace("TOK", str(device_link)))
    texts = [d.message for d in compiled.diagnostics]
    assert any("not a regular file" in t for t in texts), texts


def test_a_fifo_posing_as_an_editable_finder_is_not_read(tmp_path):
    """Lint reads `__editable___*_finder.py` files of the project folder for a module it cannot
    find. A FIFO there (nobody writing) would block lint forever, so it must not be opened. Here
    a writer stands by, so an implementation that opens it finds the mapping instead of hanging."""
    import threading

    from l3m.dsl.ext_locate import locate

    src = tmp_path / "elsewhere" / "evilpkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    fifo = tmp_path / "__editable___evil_finder.py"
    os.mkfifo(fifo)
    body = f"MAPPING = {{'evilpkg': {str(src)!r}}}\n".encode()

    def writer() -> None:
        with open(fifo, "wb") as f:  # blocks until someone opens the FIFO for reading
            f.write(body)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        assert locate("evilpkg", [tmp_path]) is None
    finally:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer when lint never opened it
        t.join()
        os.close(fd)

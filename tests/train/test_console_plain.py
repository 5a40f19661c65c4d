"""Console output: colour and progress-bar codes only on a terminal without `NO_COLOR`; a run's
messages and metrics lines go through Python's `logging` (the `l3m` loggers), so a library user's
handler receives them."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys

import pytest
from train_utils import DIGITS, child_env

from l3m.term import color_enabled
from l3m.train.api import train_main
from l3m.train.logging import ConsoleSink

ESC = "\x1b["


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_color_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert color_enabled(FakeTTY()) and not color_enabled(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_enabled(FakeTTY())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not color_enabled(FakeTTY())


def test_rich_console_is_plain_off_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    assert ConsoleSink("rich", 10).style == "rich"
    monkeypatch.setenv("NO_COLOR", "1")
    assert ConsoleSink("rich", 10).style == "plain"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert ConsoleSink("rich", 10).style == "plain"


def _on_a_pty(args: list[str], cwd, **extra: str) -> str:
    """`python -m l3m ARGS` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    main, child = pty.openpty()
    env = {**child_env(), "TERM": "xterm-256color", "COLUMNS": "120", **extra}
    env.pop("NO_COLOR", None) if "NO_COLOR" not in extra else None
    proc = subprocess.Popen([sys.executable, "-m", "l3m", *args], cwd=cwd, env=env, stdout=child, stderr=child,
                            stdin=subprocess.DEVNULL)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def files(tmp_path):
    program = tmp_path / "digits.l3m"
    program.write_text(DIGITS.replace("steps = 30, log_every = 10, eval_every = 15", "steps = 2, log_every = 1")
                       .replace('console = "plain"', 'console = "rich"'))
    bad = tmp_path / "bad.l3m"
    bad.write_text(DIGITS.replace("steps = 30", "stpes = 30"))
    return program, bad


def test_no_color_on_a_terminal(files, tmp_path):
    program, bad = files
    assert ESC in _on_a_pty(["lint", str(bad)], tmp_path)  # a terminal gets colour...
    out = _on_a_pty(["lint", str(bad)], tmp_path, NO_COLOR="1")
    assert "error[E602]" in out and ESC not in out  # ...unless NO_COLOR says otherwise
    env = {"L3M_DEVICE": "cpu", "WANDB_MODE": "disabled", "L3M_PEAK_FLOPS": "1e11"}
    out = _on_a_pty(["train", str(program), "--output", str(tmp_path / "a")], tmp_path, NO_COLOR="1", **env)
    assert "step 2/2" in out and ESC not in out, out


def test_no_escape_codes_in_pipes(files, tmp_path):
    program, bad = files
    env = {**child_env(), "L3M_DEVICE": "cpu", "WANDB_MODE": "disabled", "L3M_PEAK_FLOPS": "1e11",
           "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    run = subprocess.run([sys.executable, "-m", "l3m", "train", str(program), "--output", str(tmp_path / "b")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "step 2/2" in run.stdout
    assert ESC not in run.stdout and ESC not in run.stderr
    lint = subprocess.run([sys.executable, "-m", "l3m", "lint", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "error[E602]" in lint.stderr and ESC not in lint.stderr


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_library_users_route_messages(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("L3M_DEVICE", "cpu")
    monkeypatch.setenv("L3M_PEAK_FLOPS", "1e11")
    program, _ = files
    mine = Collect()
    logging.getLogger("l3m").addHandler(mine)
    try:
        assert train_main(str(program), ['log.console="none"'], output=str(tmp_path / "c")) == 0
    finally:
        logging.getLogger("l3m").removeHandler(mine)
    assert capsys.readouterr().out == ""  # the console is off...
    messages = [r.getMessage() for r in mine.records if r.name == "l3m.train"]
    assert any(m.startswith("training digits.l3m for 2 steps") for m in messages), messages  # ...the handler hears
    assert any(m.startswith("saved checkpoint") for m in messages), messages
    records = [r.l3m_record for r in mine.records if r.name == "l3m.train.metrics"]
    assert [(r["split"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("test", 2)]
    assert logging.getLogger("l3m").level == logging.NOTSET  # the run put the level back

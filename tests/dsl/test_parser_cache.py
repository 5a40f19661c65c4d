"""The parser tables cached on disk make the same parser as building them; a bad cache is rebuilt."""

from __future__ import annotations

import json

import pytest
from helpers import SHIPPED

from l3m.dsl import parser
from l3m.dsl.diagnostics import render_json

BROKEN = "l3m 1\nmodel m {\n  trunk { a: Linear(4, 4 x -> y }\n}\nloss l: = 3\nlet = \n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L3M_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("L3M_PARSER_CACHE", raising=False)
    return tmp_path


def build():
    return parser._parser.__wrapped__()  # a new parser through the cache, not the process-wide one


def said(lark_parser, monkeypatch) -> list[str]:
    """What parsing every shipped file and a broken one gives with `lark_parser`."""
    monkeypatch.setattr(parser, "_parser", lambda: lark_parser)
    out = [repr(parser.parse(p.read_text(encoding="utf-8"), str(p))) for p in SHIPPED]
    with pytest.raises(parser.ParseFailure) as e:
        parser.parse(BROKEN, "broken.l3m")
    return [*out, render_json(e.value.diagnostics)]


def test_tables_loaded_from_the_cache_parse_like_freshly_built_ones(cache, monkeypatch):
    built = build()
    (saved,) = cache.glob("parser-*.json")
    json.loads(saved.read_text())  # plain JSON: loading it runs no code
    loaded = build()
    assert loaded.source_path == "<deserialized>" and built.source_path != "<deserialized>"
    expected = said(built, monkeypatch)
    assert said(loaded, monkeypatch) == expected
    assert expected[-1].count('"E001"') >= 2  # the broken file's errors really came through


def test_a_corrupt_or_unwanted_cache_is_never_an_error(cache, monkeypatch):
    build()
    (saved,) = cache.glob("parser-*.json")
    saved.write_text('{"data": {"$t": [1')
    assert build().source_path != "<deserialized>"  # rebuilt ...
    assert build().source_path == "<deserialized>"  # ... and saved again
    monkeypatch.setenv("L3M_PARSER_CACHE", "0")
    saved.unlink()
    assert build().source_path != "<deserialized>" and not list(cache.glob("parser-*"))

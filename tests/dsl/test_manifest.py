"""The registry manifest (what `lint` knows of the built-ins without importing them) is the live registry.

If a test here fails after a change to a registered class, regenerate the manifest:
`.venv/bin/python -m l3m.registry_manifest --write`.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
from helpers import ROOT

from l3m import registry, registry_manifest
from l3m.dsl import compile_file
from l3m.dsl.diagnostics import render_json
from l3m.registry_manifest import builtin_entries, generate, render
from l3m.registry_static import (
    HOOKS,
    MANIFEST_PATH,
    TRAITS,
    ManifestEntry,
    decode_value,
    encode_value,
    hint_to_text,
    manifest_entries,
    text_to_hint,
)

SHIPPED = sorted([*ROOT.glob("models/*.l3m"), *ROOT.glob("examples/*.l3m"), *ROOT.glob("tests/**/*.l3m")])


@pytest.fixture(scope="module")
def live() -> dict[str, registry.Entry]:
    return {e.name: e for e in builtin_entries()}  # not what other tests of this process registered


def manifest_view(monkeypatch) -> None:
    """Answer from the manifest, as a process that never loaded the built-ins does."""
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_view", None)


def test_the_checked_in_manifest_is_what_the_live_registry_generates(live):
    assert MANIFEST_PATH.read_text(encoding="utf-8") == render(generate()), (
        "l3m/registry_manifest.json is stale: run `.venv/bin/python -m l3m.registry_manifest --write`")


def test_check_fails_on_a_stale_manifest_and_write_fixes_it(live, tmp_path, monkeypatch, capsys):
    path = tmp_path / "manifest.json"
    path.write_text(MANIFEST_PATH.read_text(encoding="utf-8").replace('"LMHead"', '"LMHeadOld"'))
    monkeypatch.setattr(registry_manifest, "MANIFEST_PATH", path)
    assert registry_manifest.main(["--check"]) == 1 and "is stale" in capsys.readouterr().err
    assert registry_manifest.main(["--write"]) == 0
    assert registry_manifest.main(["--check"]) == 0 and path.read_text() == MANIFEST_PATH.read_text()


def test_every_manifest_entry_answers_like_the_live_entry(live):
    entries = manifest_entries()
    assert [e.name for e in entries] == list(live)
    for m in entries:
        e = live[m.name]
        assert isinstance(m, ManifestEntry) and m.obj is None
        assert (m.kind, m.module, m.doc, m.outputs_spec, m.extra) == (e.kind, e.module, e.doc, e.outputs_spec, e.extra)
        assert m.signature == e.signature, m.name
        assert m.inputs == e.inputs and m.outputs == e.outputs, m.name
        assert m.shapes == e.shapes and m.checks == e.checks, m.name
        assert m.outputs_attr == e.outputs_attr, m.name
        assert set(m.type_hints) == set(e.type_hints), m.name
        for k, hint in e.type_hints.items():
            assert _same_hint(m.type_hints[k], hint), (m.name, k, m.type_hints[k], hint)
        for t in TRAITS:
            assert m.trait(t) == e.trait(t), (m.name, t)
        for h in HOOKS:
            assert m.hook(h) is e.hook(h), (m.name, h)


def _same_hint(a, b) -> bool:
    """Equal, except that a class the checker does not model is a stand-in of the same name."""
    if a == b:
        return True
    if isinstance(a, type) and isinstance(b, type):
        return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
    oa, ob = typing.get_origin(a), typing.get_origin(b)
    args_a, args_b = typing.get_args(a), typing.get_args(b)
    return oa == ob and len(args_a) == len(args_b) and all(_same_hint(x, y) for x, y in zip(args_a, args_b))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_every_diagnostic_is_the_same_with_the_manifest_and_the_live_registry(path, live, monkeypatch):
    with_live = render_json(compile_file(str(path)).diagnostics)
    manifest_view(monkeypatch)
    assert registry.lookup("Transformer").obj is None  # really the manifest
    assert render_json(compile_file(str(path)).diagnostics) == with_live


def test_wrong_programs_get_the_same_diagnostics_from_the_manifest(live, monkeypatch, tmp_path):
    """Argument types, unknown arguments, ports and data checks: the paths that read the entries."""
    prog = tmp_path / "bad.l3m"
    prog.write_text('''l3m 1
data { train: TextBytes(seq_len = "8", batch_size = 2, tokenizer = "bytes") -> tokens, targets, segments
       other: WebDataset(root = "x", text_ext = "") -> image, text, label }
model m {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16, init = "bogus") tokens -> x }
  trunk        { blocks: Transformer(dim = 16, depth = 1, heads = 2, kv_heads = 3, nope = 1) x -> x }
  head         { lm: LMHead(16, 256) (y = x) -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
optimizer AdamW(lr = "fast", betas = [0.9])
''')
    with_live = render_json(compile_file(str(prog)).diagnostics)
    manifest_view(monkeypatch)
    with_manifest = render_json(compile_file(str(prog)).diagnostics)
    assert with_manifest == with_live
    for code in ("E203", "E205", "E301", "E830"):  # the checks really ran
        assert f'"{code}"' in with_manifest


def test_values_and_annotations_survive_the_manifest():
    for value in [None, True, 3, 2.5, float("inf"), "s", [1, (2, 3)], (0.1, 0.2), {"a": (1,)}, ()]:
        back = decode_value(encode_value(value))
        assert back == value and type(back) is type(value)
    opaque = decode_value(encode_value(object()))
    assert repr(opaque).startswith("<object object")
    for hint in [int, int | None, typing.Optional[int], list[str], tuple[int, ...], typing.Literal["a", 1, None],  # noqa: UP045
                 typing.Union[typing.Literal["x"], None], dict[str, float], typing.Sequence[int], type(None)]:  # noqa: UP007
        assert text_to_hint(hint_to_text(hint)) == hint, hint
    stand_in = text_to_hint(hint_to_text(inspect.Signature))
    assert stand_in.__name__ == "Signature" and stand_in is not inspect.Signature


def test_annotations_are_evaluated_without_running_code():
    for text in ["__import__('os').system('true')", "(lambda: 1)()", "int.__subclasses__()", "typing._os"]:
        with pytest.raises(ValueError):
            text_to_hint(text)


def test_the_registry_answers_from_the_manifest_until_the_builtins_are_loaded(live, monkeypatch):
    manifest_view(monkeypatch)
    entry = registry.lookup("LMHead")
    assert isinstance(entry, ManifestEntry) and entry.obj is None
    assert [n for n in registry.names("block") if n in live] == [n for n, e in live.items() if e.kind == "block"]
    monkeypatch.setattr(registry, "_loaded", True)
    assert registry.lookup("LMHead") is live["LMHead"] and live["LMHead"].obj is not None


def test_without_a_usable_manifest_the_registry_loads_the_builtins(live, monkeypatch, tmp_path):
    import l3m.registry_static as static

    manifest_view(monkeypatch)
    monkeypatch.setattr(static, "_ENTRIES", None)
    monkeypatch.setattr(static, "MANIFEST_PATH", tmp_path / "missing.json")
    assert registry.lookup("LMHead") is live["LMHead"] and registry._loaded

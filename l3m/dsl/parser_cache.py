"""Build the Lark parser once per grammar, not once per process.

Constructing the LALR tables takes about 0.25 s, most of a cold `l3m lint`. The tables are saved as
JSON (never pickle: loading them runs no code) in the user's cache directory, named by a hash of
everything they depend on (grammar, options, Lark and Python versions), and loaded next time in a
few milliseconds. Any problem with the cache (unwritable, corrupt, stale) falls back to building.

`L3M_CACHE_DIR` overrides the directory (default `$XDG_CACHE_HOME/l3m` or `~/.cache/l3m`);
`L3M_PARSER_CACHE=0` turns the cache off.

Lark is imported here first (`l3m.dsl` imports this module before anything else): without the
optional `regex` module, which Lark imports when it is installed (a third of Lark's import time)
but uses only for `Lark(regex=True)`, which l3m never asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def _import_lark():
    """`import lark`, with `regex` hidden while Lark looks for it (then visible again to everyone)."""
    if "lark" in sys.modules or "regex" in sys.modules:
        import lark

        return lark
    sys.modules["regex"] = None  # type: ignore[assignment] - `import regex` raises ImportError meanwhile
    try:
        import lark
    finally:
        del sys.modules["regex"]
    return lark


lark = _import_lark()
from lark.grammar import Rule  # noqa: E402 - after lark, imported above without regex
from lark.lexer import TerminalDef  # noqa: E402

# Options that hold Python objects: given again when the tables are loaded, never saved.
_LIVE_OPTIONS = ("transformer", "_plugins", "postlex", "lexer_callbacks", "edit_terminals")


def cache_dir() -> Path | None:
    if os.environ.get("L3M_PARSER_CACHE") == "0":
        return None
    if os.environ.get("L3M_CACHE_DIR"):
        return Path(os.environ["L3M_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "l3m"


def cached_lark(grammar: str, **options: Any) -> lark.Lark:
    """`lark.Lark(grammar, **options)`, its tables read from the cache when they are there."""
    live = {k: options[k] for k in _LIVE_OPTIONS if k in options}
    plain = {k: v for k, v in options.items() if k not in live}
    where = cache_dir()
    path = where / f"parser-{_key(grammar, plain, bool(live.get('_plugins')))}.json" if where else None
    if path is not None:
        parser = _load(path, live)
        if parser is not None:
            return parser
    parser = lark.Lark(grammar, **options)
    if path is not None:
        _save(parser, path)
    return parser


def _key(grammar: str, options: dict[str, Any], accelerated: bool) -> str:
    text = json.dumps([grammar, sorted(options.items()), lark.__version__, sys.version_info[:2], accelerated],
                      default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load(path: Path, live: dict[str, Any]) -> lark.Lark | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_hook=_decode)
        return lark.Lark._load_from_dict(data["data"], data["memo"], **live)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken cache file is rebuilt, never an error
        return None


def _save(parser: lark.Lark, path: Path) -> None:
    try:
        data, memo = parser.memo_serialize([TerminalDef, Rule])
        data["options"] = {k: v for k, v in data["options"].items() if k not in _LIVE_OPTIONS}
        text = json.dumps({"data": _encode(data), "memo": _encode(memo)}, separators=(",", ":"))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".parser-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)  # readers see the whole file or none
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception:  # noqa: BLE001 - no cache (read-only home, odd option): build next time too
        return


def _encode(o: Any) -> Any:
    """JSON keeps neither tuples nor integer keys: tag them (`$t`, `$d`) so they come back as they were."""
    if isinstance(o, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in o):
            return {k: _encode(v) for k, v in o.items()}
        return {"$d": [[_encode(k), _encode(v)] for k, v in o.items()]}
    if isinstance(o, tuple):
        return {"$t": [_encode(x) for x in o]}
    if isinstance(o, list):
        return [_encode(x) for x in o]
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    raise TypeError(f"cannot cache a {type(o).__name__} in the parser tables")


def _decode(d: dict) -> Any:
    """`json.loads`'s object hook (inner objects first): tagged tuples and dicts come back as such."""
    if len(d) == 1:
        if "$t" in d:
            return tuple(d["$t"])
        if "$d" in d:
            return {k: v for k, v in d["$d"]}
    return d

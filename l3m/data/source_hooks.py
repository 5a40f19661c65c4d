"""What `l3m lint` asks a data source's class without building it, in a torch-free module.

A source class names these as static methods (`port_problem = staticmethod(text_port_problem)`);
the registry manifest records where they live, so the checker calls them without importing the
source's own module (which imports torch).
"""

from __future__ import annotations

from l3m.data.prepare.format import read_manifest
from l3m.data.tokenizers.base import Tokenizer

WEBDATASET_PORTS = ("image", "text", "label")


def text_port_problem(port: str, args: dict) -> str | None:
    """Why a text source called with `args` (its constructor's arguments, defaults filled) cannot
    give `port`, or None."""
    if port != "segments":
        return None
    if args.get("tokenizer") == "bytes":
        return "segments are the documents of a packed stream: they need a real tokenizer, not \"bytes\""
    if args.get("pack") is False:
        return "with pack = false every sample is one document: there are no segments to give"
    return None


def webdataset_port_problem(port: str, args: dict) -> str | None:
    """Why a port bound in the file is one these arguments switch off: the ports are optional, so a
    positional `-> image, label` binds `label` to the `text` port."""
    ext = {p: f"{p}_ext" for p in WEBDATASET_PORTS}.get(port)
    if ext is None or not isinstance(args.get(ext), str) or args[ext].strip():
        return None
    return (f"{ext} is empty, so there is no '{port}' member to read; set {ext}, or bind the ports by name: "
            "`-> (image = image, label = label)` (a positional list binds image, text, label in that order)")


class ManifestVocab(Tokenizer):
    """A token-shard manifest's tokenizer as far as the checker needs it: vocabulary size and EOS id."""

    kind = "manifest"

    def __init__(self, name: str, vocab_size: int, eos_id: int | None) -> None:
        super().__init__(name, vocab_size, {"eos": (eos_id, "")} if eos_id is not None else {})

    def token_to_id(self, token: str) -> int | None:
        return None

    def id_to_token(self, i: int) -> str | None:
        return None


def shards_manifest_tokenizer(root: str) -> ManifestVocab:
    """The vocabulary of `root`'s token-shard manifest (FileNotFoundError: not there; ValueError: unusable)."""
    m = read_manifest(root)
    tok = m["tokenizer"]
    return ManifestVocab(str(tok.get("name", root)), int(tok["vocab_size"]), tok["eos_id"])

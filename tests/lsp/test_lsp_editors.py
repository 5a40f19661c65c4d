"""The editor files: they cannot be run here (no VS Code), so check what can be: every JSON file parses,
the extension's manifest names files that exist and wires the client to `l3m lsp`, and the snippets in
editors/README.md are well-formed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VSCODE = ROOT / "editors" / "vscode"


def test_every_json_file_parses():
    files = sorted(VSCODE.rglob("*.json"))
    assert {f.name for f in files} >= {"package.json", "language-configuration.json", "l3m.tmLanguage.json"}
    for f in files:
        if "node_modules" not in f.parts:
            json.loads(f.read_text())


def test_package_json_references_existing_files_and_starts_the_server():
    pkg = json.loads((VSCODE / "package.json").read_text())
    assert (VSCODE / pkg["main"]).is_file()
    assert "onLanguage:l3m" in pkg["activationEvents"]
    for lang in pkg["contributes"]["languages"]:
        assert (VSCODE / lang["configuration"]).is_file()
        assert ".l3m" in lang["extensions"]
    for grammar in pkg["contributes"]["grammars"]:
        assert (VSCODE / grammar["path"]).is_file()
        assert json.loads((VSCODE / grammar["path"]).read_text())["scopeName"] == grammar["scopeName"]
    props = pkg["contributes"]["configuration"]["properties"]
    assert props["l3m.server.path"]["default"] == "l3m" and props["l3m.server.args"]["default"] == ["lsp"]
    assert "vscode-languageclient" in pkg["dependencies"]
    js = (VSCODE / pkg["main"]).read_text()
    assert 'require("vscode-languageclient/node")' in js and '"server.path"' in js
    for cmd in pkg["contributes"].get("commands", []):
        assert f'"{cmd["command"]}"' in js, f"{cmd['command']} is declared but never registered"


def test_language_configuration_has_comments_and_brackets():
    conf = json.loads((VSCODE / "language-configuration.json").read_text())
    assert conf["comments"]["lineComment"] == "#"
    assert {tuple(b) for b in conf["brackets"]} == {("{", "}"), ("[", "]"), ("(", ")")}
    assert {p["open"] for p in conf["autoClosingPairs"]} >= {"{", "[", "(", '"'}


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_extension_js_is_valid_javascript():
    subprocess.run(["node", "--check", str(VSCODE / "extension.js")], check=True)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_helix_snippet_is_valid_toml_that_starts_the_server():
    import tomllib

    readme = (ROOT / "editors" / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    conf = tomllib.loads(block)
    assert conf["language-server"]["l3m"] == {"command": "l3m", "args": ["lsp"]}
    assert conf["language"][0]["language-servers"] == ["l3m"]
    assert 'cmd = { "l3m", "lsp" }' in readme  # the Neovim snippets start the same command


def test_the_cli_has_an_lsp_command():
    from l3m.cli import build_parser

    args = build_parser().parse_args(["lsp"])
    assert args.func.__name__ == "cmd_lsp"


def test_lsp_without_pygls_says_how_to_install_it():
    code = ("import sys; sys.modules['pygls'] = None; sys.modules['pygls.lsp.server'] = None\n"
            "from l3m.cli import main; sys.exit(main(['lsp']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'l3m[lsp]'" in proc.stderr

"""`l3m lsp`: a Language Server for `.l3m` files over stdio (pygls + lsprotocol).

The analysis modules here (documents, hover, definition, completion, symbols) depend only on the
compiler's front end, never on torch, so the server starts and answers as fast as `l3m lint`; only
`server` imports pygls, which is the optional extra `l3m[lsp]`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Serve on stdin/stdout until the client says exit."""
    try:
        from l3m.lsp.server import serve
    except ImportError as e:  # pygls is an optional dependency
        print(f"l3m lsp: the language server needs pygls and lsprotocol ({e}); "
              "install them with: pip install 'l3m[lsp]'", file=sys.stderr)
        return 2
    serve()
    return 0

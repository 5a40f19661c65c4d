"""A Pygments lexer for `.l3m` files, so Sphinx, MkDocs, `rich` and `pygmentize` highlight them.

Registered as the entry point `pygments.lexers: l3m`; only Pygments imports this module (l3m itself never
does), so Pygments stays an optional dependency. The token classes follow the grammar (l3m/dsl/grammar.lark):
keywords that are also valid names are keywords only where the grammar reads them as such.
"""

from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class L3mLexer(RegexLexer):
    """Lexer for l3m experiment files (`.l3m`)."""

    name = "l3m"
    aliases = ["l3m"]
    filenames = ["*.l3m"]
    mimetypes = ["text/x-l3m"]

    def analyse_text(text: str) -> float:  # noqa: N805 - Pygments makes it a static method
        """Every .l3m file starts with its language version (`l3m 1`), which helps `guess_lexer`."""
        return 1.0 if re.match(r"\A\s*l3m[ \t]+[0-9]+[ \t]*(#[^\n]*)?\n", text) else 0.0

    tokens = {
        "root": [
            (r"[ \t\r\f\v\n]+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r'"', String.Double, "string"),
            (r"\A(l3m)(\s+)([0-9]+)", bygroups(Keyword.Namespace, Whitespace, Number.Integer)),
            (r"(import)(\s+)(?=\")", bygroups(Keyword.Namespace, Whitespace)),
            (rf"(as)(\s+)({_NAME})", bygroups(Keyword.Namespace, Whitespace, Name.Namespace)),
            (r"(extension)(\s+)(?=\")", bygroups(Keyword.Namespace, Whitespace)),
            (rf"(let)(\s+)({_NAME})", bygroups(Keyword.Declaration, Whitespace, Name.Variable)),
            (rf"(def)(\s+)({_NAME})", bygroups(Keyword.Declaration, Whitespace, Name.Function)),
            (rf"(model)(\s+)({_NAME})", bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (rf"(loss|metric)(\s+)({_NAME})(\s*)(:)",
             bygroups(Keyword.Declaration, Whitespace, Name.Label, Whitespace, Punctuation)),
            (rf"(optimizer|schedule)(\s+)(?={_NAME})", bygroups(Keyword.Declaration, Whitespace)),
            (rf"(default)(\s+)(?={_NAME}\s*\()", bygroups(Keyword.Declaration, Whitespace)),
            (r"(preprocessor|trunk|postprocessor|head|train|mesh|log|data|keys)(\s*)(\{)",
             bygroups(Keyword.Reserved, Whitespace, Punctuation)),
            (r"(weight)(\s+)(?=(?!->)[-+0-9.(]|[A-Za-z_])", bygroups(Keyword, Whitespace)),
            (words(("true", "false", "null"), suffix=r"\b"), Keyword.Constant),
            include("numbers"),
            (rf"({_NAME})(\s*)(:)", bygroups(Name.Label, Whitespace, Punctuation)),
            (rf"({_NAME})(\s*)(=)", bygroups(Name.Attribute, Whitespace, Operator)),
            (rf"{_NAME}(?=\s*\()", Name.Class),  # a block, source, loss ... type, or a template
            (rf"{_NAME}(?=\.)", Name.Namespace),
            (_NAME, Name),
            (r"->", Operator),
            (r"\*\*|//|[-+*/%=!]", Operator),
            (r"[{}()\[\],:.]", Punctuation),
        ],
        "numbers": [
            (r"([0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)([eE][-+]?[0-9]+)?", Number.Float),
            (r"[0-9][0-9_]*[eE][-+]?[0-9]+", Number.Float),
            (r"[0-9][0-9_]*", Number.Integer),
        ],
        "string": [
            (r'"', String.Double, "#pop"),
            (r"\\.", String.Escape),
            (r"\$\{[^}\"\n]*\}", String.Interpol),  # ${VAR:-default}, expanded when the data is read
            (r'[^"\\$\n]+', String.Double),
            (r"\$", String.Double),
            (r"\n", Text, "#pop"),  # an unterminated string ends at the line (the compiler reports it)
        ],
    }

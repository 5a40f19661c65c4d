"""Bounds on what compiling a `.l3m` file may cost, and the names of variables it may not read.

A `.l3m` file is input from anywhere (a pull request, a shared config): compiling it must take
bounded time and memory and must not copy credentials out of the environment. Every limit here is
generous for real programs and is reported as a `file:line:col` diagnostic, never a crash.
"""

from __future__ import annotations

import math
from typing import Any

MAX_FILE_BYTES = 16 * 1024 * 1024  # one source file
SOURCE_SUFFIX = ".l3m"
MAX_DEPTH = 64  # brackets in the source, and lists inside lists in a value
MAX_VALUE_SIZE = 1_000_000  # list items (at every level), string characters, 64-bit words of integers
MAX_BUILT = 100_000_000  # the same units, summed over every list and string one compile builds
MAX_INT_BITS = 1024  # about 1.8e308, the range of a float
MAX_INT_DIGITS = 320  # an integer literal; 1024 bits have 309 decimal digits
MAX_INSTANCE_DEPTH = 32  # templates instantiating templates
MAX_NODES = 20_000  # nodes in one program, templates expanded (two instances in each of 30 levels make 2**30)

# A `${NAME}` whose name contains one of these (any case, anywhere in the name) is not read from the
# environment: credentials must not reach the resolved program, the run record or wandb. Plain
# substrings on purpose: `OPENAI_APIKEY` and `DB_PASSWD` are caught; the price is that innocent names
# such as `MONKEY` or `AUTHOR` are refused too, which a `let` or an override works around. One word is
# exempt, because ML configs name it so often: TOKENIZER (`TOKENIZER_PATH` is read; `TOKENIZER_TOKEN` is not).
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "AUTH")
NOT_SECRET = ("TOKENIZER",)


def secret_word(name: str) -> str | None:
    """The credential-like word in an environment variable's name, if any."""
    upper = name.upper()
    for word in NOT_SECRET:
        upper = upper.replace(word, "")
    return next((w for w in SECRET_WORDS if w in upper), None)


def int_weight(value: int) -> int:
    return 1 + value.bit_length() // 64


def measure(value: Any) -> tuple[int, int]:
    """(size, depth) of an evaluated value, in the units of MAX_VALUE_SIZE and MAX_DEPTH: a list's size
    is the sum of its items' (at least 1), a string's its length, an integer's its 64-bit words.

    Iterative, and each distinct list is walked once, so a list shared many times
    (`[xs] * 1000`) costs its length, yet is counted as often as it appears.
    """
    if not isinstance(value, list):
        return _scalar(value), 0
    done: dict[int, tuple[int, int]] = {}
    keep: list[list] = []  # holds the walked lists, so that their ids stay unique meanwhile
    stack: list[tuple[list, bool]] = [(value, False)]
    while stack:
        lst, expanded = stack.pop()
        if id(lst) in done:
            continue
        if not expanded:
            stack.append((lst, True))
            stack.extend((x, False) for x in lst if isinstance(x, list) and id(x) not in done)
            continue
        size, depth = 0, 0
        for x in lst:
            if isinstance(x, list):
                s, d = done.get(id(x), (1, 1))  # (a list inside itself cannot be built in the language)
                size, depth = size + s, max(depth, d)
            else:
                size += _scalar(x)
            if size > MAX_VALUE_SIZE:
                break
        done[id(lst)] = (max(size, 1), depth + 1)
        keep.append(lst)
    return done[id(value)]


def _scalar(value: Any) -> int:
    if isinstance(value, str):
        return max(1, len(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return int_weight(value)
    return 1


def power_too_large(base: Any, exp: Any) -> bool:
    """Whether `base ** exp` on integers would exceed MAX_INT_BITS, decided without computing it."""
    if not (isinstance(base, int) and isinstance(exp, int)) or exp <= 0 or abs(base) < 2:
        return False
    return exp * math.log2(abs(base)) > MAX_INT_BITS


INT_TOO_LARGE = f"integers are limited to {MAX_INT_BITS} bits (about 1.8e308)"

"""File names as people read them. A name may hold any bytes the OS allows: Python hands bytes that are
not UTF-8 over as lone surrogates (os.listdir's surrogateescape), which no UTF-8 terminal, JSON parser
or figure can encode, and a name may hold a newline, which would split an output line in two."""

from __future__ import annotations

import unicodedata


def portable(name) -> str:
    """`name` as valid Unicode: bytes that are not UTF-8 written as \\xNN; every other name unchanged.
    For JSON, CSV, class names and figures, where control characters are escaped by the format itself."""
    text = str(name)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte stands for: keep it visible, as \\udXXX
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def shown(name) -> str:
    """portable(name), with control characters and line breaks escaped too (\\n, \\t, \\x1b): one
    terminal line that says exactly which file is meant."""
    text = portable(name)
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )

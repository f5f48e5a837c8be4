"""Checks of decoded JSON and TOML values and of client text (pure; no I/O).

In Python `bool` is a subclass of `int`, so `isinstance(True, int)` holds; in a config file or a
request body `true` is never a number. Every number check goes through these helpers.
"""

from __future__ import annotations

import math
from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An integer or a float, and not a boolean (NaN and infinities included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """A number that is neither NaN nor infinite, and fits a float (a 400-digit int does not)."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_instance(value: object, kinds: type | tuple[type, ...]) -> bool:
    """`isinstance(value, kinds)`, except that a boolean is never an int or a float."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


# Bidirectional embeddings, overrides and isolates: a name like "invoice\u202egpj.exe" would
# display as "invoiceexe.jpg".
_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def has_control_characters(text: str) -> bool:
    """True if `text` holds a C0 or C1 control, DEL, or a bidirectional formatting control."""
    return any(_is_control(c) for c in text)


def _is_control(c: str) -> bool:
    """C0 and C1 control characters, DEL, and the bidirectional formatting controls."""
    code = ord(c)
    return code < 0x20 or 0x7F <= code <= 0x9F or c in _BIDI_CONTROLS


def text_refusal(text: str, name: str) -> str | None:
    """Why the string `name` cannot be taken as text, worded for the client; None if it can.

    Text holds no NUL (PostgreSQL's text refuses one) and no lone surrogate (JSON can spell
    one, as `\\ud800`; no UTF-8 encodes it, so neither database takes it)."""
    if "\x00" in text:
        return f"Invalid '{name}': the string holds a NUL character (U+0000)."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"Invalid '{name}': the string holds a lone surrogate, which is not valid Unicode."
    return None

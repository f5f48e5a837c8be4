"""Checks of decoded JSON and TOML values and of client text (pure; no I/O).

In Python `bool` is a subclass of `int`, so `isinstance(True, int)` holds; in a config file or a
request body `true` is never a number. Every number check goes through these helpers.
"""

from __future__ import annotations

import math
import reprlib
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


# The most characters of a value a client sent that a message quotes: a batch stores its
# errors' messages, and a value quoted whole (a 1 MB model name, on each of 100 lines) would be
# stored, listed and held as often.
QUOTED_CHARS = 100

# A repr of at most a few items a level, two levels deep, each string and number cut short:
# whatever the array or object, a few KB at most, made without walking all of it.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 2
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _SHORT_REPR.maxlong = QUOTED_CHARS


def too_long(name: str, most: int, length: int) -> str:
    """OpenAI's words for a string `name` of `length` characters, over its `most`."""
    return (
        f"Invalid '{name}': string too long. Expected a string with maximum length {most}, "
        f"but got a string with length {length} instead."
    )


def shortened(text: str, most: int = QUOTED_CHARS) -> str:
    """`text` if it has at most `most` characters, else its first `most` and an ellipsis:
    what a message may say of a value a client sent."""
    return text if len(text) <= most else text[:most] + "\u2026"


def quoted(value: object) -> str:
    """A value a client sent (any JSON value), as a message quotes it: a string in quotes
    (`repr`, so that a control character or lone surrogate shows as its escape), cut
    `shortened`; anything else as a short repr. Never much over a thousand characters
    however large the value (an escape such as `\\U000e0001` is ten characters of one)."""
    if isinstance(value, str):
        return repr(shortened(value))
    return shortened(_SHORT_REPR.repr(value))

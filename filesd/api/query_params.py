"""Query string parameters, checked as OpenAI checks them (its messages and codes)."""

from __future__ import annotations

import re

from multidict import MultiMapping

from .errors import InvalidRequest

_INT = re.compile(r"-?[0-9]+")


def int_param(
    params: MultiMapping[str], name: str, default: int, minimum: int, maximum: int | None
) -> int:
    """The integer query parameter `name` (`default` when absent or empty), within
    `minimum`..`maximum` (None: no maximum); an `InvalidRequest` naming it otherwise."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not _INT.fullmatch(raw) or len(raw) > 19:
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an integer, but got a string instead.",
            param=name,
            code="invalid_type",
        )
    value = int(raw)
    if value < minimum:
        raise InvalidRequest(
            f"Invalid '{name}': integer below minimum value. "
            f"Expected a value >= {minimum}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise InvalidRequest(
            f"Invalid '{name}': integer above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value

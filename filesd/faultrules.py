"""Fault rules: what to break, for which requests. Pure data and parsing (no HTTP here).

A rule matches requests by method, route template and project, then for the next `count`
matches (or all), each with `probability`, it adds latency and then does one of: answer with
`status` (in OpenAI's envelope, with optional retry headers), drop the connection, or make the
storage misbehave for that request (`full` disk, `missing_blob`, `slow` disk).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .values import is_finite_number, is_instance

STORAGE_FAULTS = ("full", "missing_blob", "slow")

# The storage fault in force for the request being handled (set by the faults middleware).
storage_fault: contextvars.ContextVar[FaultRule | None] = contextvars.ContextVar(
    "storage_fault", default=None
)


class FaultRuleError(ValueError):
    """A rule is malformed; the message names the field, and so does `field` (None when the
    rule as a whole is at fault)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class FaultRule:
    method: str = "*"
    route: str = "*"
    project: str | None = None
    status: int | None = None
    message: str | None = None
    code: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    latency_ms: int = 0
    disconnect: bool = False
    storage: str | None = None
    slow_ms: int = 200
    count: int | None = None
    probability: float = 1.0

    def matches(self, method: str, route: str, project: str | None) -> bool:
        return (
            self.method in ("*", method)
            and self.route in ("*", route)
            and (self.project is None or self.project == project)
        )


_KINDS: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "route": (str,),
    "project": (str,),
    "status": (int,),
    "message": (str,),
    "code": (str,),
    "retry_after": (int, float),
    "retry_after_ms": (int,),
    "should_retry": (bool,),
    "latency_ms": (int,),
    "disconnect": (bool,),
    "storage": (str,),
    "slow_ms": (int,),
    "count": (int,),
    "probability": (int, float),
}
# The fields a rule may give.
FAULT_RULE_FIELDS = tuple(_KINDS)


def parse_fault_rule(raw: Mapping[str, Any], where: str = "fault") -> FaultRule:
    """Validate a rule from TOML or JSON; errors name `where.field`."""
    if not isinstance(raw, Mapping):
        raise FaultRuleError(f"{where}: expected a table/object")
    for name, value in raw.items():
        kinds = _KINDS.get(name)
        if kinds is None:
            raise FaultRuleError(f"{where}.{name}: unknown field", name)
        if not is_instance(value, kinds):
            raise FaultRuleError(f"{where}.{name}: wrong type ({type(value).__name__})", name)
        if isinstance(value, float) and not is_finite_number(value):
            raise FaultRuleError(f"{where}.{name}: must be a finite number", name)
    rule = FaultRule(**{**raw, "method": str(raw.get("method", "*")).upper()})
    actions = [rule.status is not None, rule.disconnect, rule.storage is not None]
    if sum(actions) > 1:
        raise FaultRuleError(f"{where}: give at most one of status, disconnect, storage")
    if sum(actions) == 0 and rule.latency_ms == 0:
        raise FaultRuleError(
            f"{where}: does nothing (give status, disconnect, storage or latency_ms)"
        )
    if rule.status is not None and not 400 <= rule.status <= 599:
        raise FaultRuleError(f"{where}.status: must be 400-599", "status")
    if rule.storage is not None and rule.storage not in STORAGE_FAULTS:
        raise FaultRuleError(f"{where}.storage: must be one of {list(STORAGE_FAULTS)}", "storage")
    if not 0 <= rule.probability <= 1:
        raise FaultRuleError(f"{where}.probability: must be between 0 and 1", "probability")
    if rule.count is not None and rule.count < 1:
        raise FaultRuleError(f"{where}.count: must be at least 1", "count")
    if rule.latency_ms < 0 or rule.slow_ms < 0:
        raise FaultRuleError(f"{where}: latency_ms and slow_ms must be 0 or more")
    return rule

"""The quota rules as plain values and pure functions: which limit applies to a member, and how
much of it their recent clips use. `QuotaStore` feeds them rows; tests can feed them anything.

Limits are `int >= 0` (0 blocks the member) or `None` for unlimited, everywhere: user overrides,
role limits, guild defaults and the host default. Usage is a rolling window: a clip counts for
exactly one period after it was reserved, so there is no midnight rush and no time zone question.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from storage.clock import from_micros

Period = Literal["hour", "day", "week"]
PERIODS: tuple[Period, ...] = get_args(Period)
PERIOD_LENGTHS: dict[Period, timedelta] = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}
# How long one clip counts against the limit, as a member reads it: "this day" would promise a
# reset at midnight, and the window rolls.
PERIOD_SPANS: dict[Period, str] = {"hour": "an hour", "day": "24 hours", "week": "7 days"}
# Where the limit that applies to a member comes from.
QuotaSource = Literal["user", "role", "guild"]


def check_limit(limit: object) -> int | None:
    """`limit` itself if it is a valid limit (None or a whole number >= 0); else ValueError."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"a quota limit is a whole number >= 0 or None (unlimited), not {limit!r}")
    return limit


def check_period(period: object) -> Period:
    for known in PERIODS:
        if period == known:
            return known
    raise ValueError(f"a quota period is one of {', '.join(PERIODS)}, not {period!r}")


def clips(count: int) -> str:
    return f"{count} clip{'' if count == 1 else 's'}"


def counts_for(period: str) -> str:
    """'each counts for 24 hours': how the rolling window reads in a member's message."""
    return f"each counts for {PERIOD_SPANS.get(period, period)}"  # type: ignore[call-overload]


def period_micros(period: Period) -> int:
    return PERIOD_LENGTHS[period] // timedelta(microseconds=1)


@dataclass(frozen=True)
class QuotaRule:
    """A limit and the period it applies to."""

    limit: int | None
    period: Period

    def __post_init__(self) -> None:
        check_limit(self.limit)
        check_period(self.period)

    def describe(self) -> str:
        if self.limit is None:
            return "unlimited"
        if self.limit == 0:
            return "blocked"
        return f"{clips(self.limit)} per {self.period}"

    def to_json(self) -> dict[str, object]:
        return {"limit": self.limit, "period": self.period}


@dataclass(frozen=True)
class QuotaStatus:
    """What a member has: the answer to every quota question, and to every reservation."""

    limit: int | None
    # Clips reserved or charged in the last `period` (refunded and forgiven ones do not count).
    used: int
    # None when unlimited; never negative (it is 0 when a lowered limit is below `used`).
    remaining: int | None
    period: Period
    # When the member gets a clip back: with none left, the moment they can make one again;
    # otherwise the moment their oldest counted clip leaves the window. None when nothing is
    # counted, or the member is unlimited or blocked (time does not help then).
    next_available_at: datetime | None
    source: QuotaSource

    @property
    def unlimited(self) -> bool:
        return self.limit is None

    @property
    def blocked(self) -> bool:
        return self.limit == 0

    @property
    def exhausted(self) -> bool:
        """True when a reservation now would be refused."""
        return self.remaining == 0


def choose_rule(
    user: QuotaRule | None, role_limits: Iterable[int | None], guild: QuotaRule
) -> tuple[QuotaRule, QuotaSource]:
    """The rule for a member: their own override; else the most generous limit among their roles
    (unlimited beats any number), counted in the guild's period; else the guild default."""
    if user is not None:
        return user, "user"
    limits = list(role_limits)
    if limits:
        best = None if None in limits else max(limit for limit in limits if limit is not None)
        return QuotaRule(best, guild.period), "role"
    return guild, "guild"


def measure(
    rule: QuotaRule, source: QuotaSource, counted_at: Iterable[int], now_micros: int
) -> QuotaStatus:
    """The status of a member under `rule`, given when each of their counted clips was reserved
    (microseconds since the epoch; clips older than the period are ignored here)."""
    window = period_micros(rule.period)
    inside = sorted(at for at in counted_at if at > now_micros - window)
    used = len(inside)
    if rule.limit is None:
        return QuotaStatus(None, used, None, rule.period, None, source)
    remaining = max(0, rule.limit - used)
    next_at: int | None
    if rule.limit == 0 or used == 0:
        next_at = None
    elif remaining > 0:
        next_at = inside[0] + window
    else:
        # One clip is free again once `used - limit + 1` clips have left the window.
        next_at = inside[used - rule.limit] + window
    return QuotaStatus(
        limit=rule.limit,
        used=used,
        remaining=remaining,
        period=rule.period,
        next_available_at=None if next_at is None else from_micros(next_at),
        source=source,
    )

"""The quota rules as pure functions: which limit applies, and what a member's clips use of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.clock import from_micros, to_micros
from storage.errors import QuotaExceeded
from storage.quota_rules import (
    PERIOD_LENGTHS,
    PERIODS,
    QuotaRule,
    check_limit,
    check_period,
    choose_rule,
    measure,
    period_micros,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = period_micros("hour")


def us(when: datetime) -> int:
    return to_micros(when)


def test_user_override_beats_roles_and_guild() -> None:
    rule, source = choose_rule(QuotaRule(1, "week"), [None, 50], QuotaRule(10, "day"))
    assert (rule, source) == (QuotaRule(1, "week"), "user")


def test_most_generous_role_wins_in_the_guild_period() -> None:
    rule, source = choose_rule(None, [2, 7, 0], QuotaRule(3, "hour"))
    assert (rule, source) == (QuotaRule(7, "hour"), "role")


def test_unlimited_role_beats_any_number() -> None:
    rule, _ = choose_rule(None, [100, None], QuotaRule(3, "day"))
    assert rule.limit is None


def test_blocked_role_alone_blocks_even_with_generous_guild_default() -> None:
    rule, source = choose_rule(None, [0], QuotaRule(None, "day"))
    assert (rule.limit, source) == (0, "role")


def test_guild_default_without_override_or_limited_role() -> None:
    assert choose_rule(None, [], QuotaRule(5, "day")) == (QuotaRule(5, "day"), "guild")


def test_uses_older_than_the_period_do_not_count() -> None:
    uses = [us(NOW - timedelta(minutes=61)), us(NOW - timedelta(minutes=59))]
    status = measure(QuotaRule(3, "hour"), "guild", uses, us(NOW))
    assert (status.used, status.remaining) == (1, 2)
    # Clips left: the next one comes back when the oldest counted one leaves the window.
    assert status.next_available_at == NOW + timedelta(minutes=1)


def test_exhausted_member_gets_a_clip_when_the_oldest_use_leaves() -> None:
    uses = [us(NOW - timedelta(minutes=m)) for m in (50, 10, 30)]
    status = measure(QuotaRule(3, "hour"), "user", uses, us(NOW))
    assert (status.used, status.remaining, status.exhausted) == (3, 0, True)
    assert status.next_available_at == NOW + timedelta(minutes=10)


def test_lowered_limit_waits_for_enough_uses_to_leave() -> None:
    # 4 used, limit lowered to 2: three must leave before one is free again.
    uses = [us(NOW - timedelta(minutes=m)) for m in (40, 30, 20, 10)]
    status = measure(QuotaRule(2, "hour"), "guild", uses, us(NOW))
    assert (status.used, status.remaining) == (4, 0)
    assert status.next_available_at == NOW + timedelta(minutes=40)


def test_unlimited_and_blocked_have_no_next_time() -> None:
    uses = [us(NOW - timedelta(minutes=5))]
    unlimited = measure(QuotaRule(None, "day"), "role", uses, us(NOW))
    assert (unlimited.limit, unlimited.remaining, unlimited.used) == (None, None, 1)
    assert unlimited.unlimited and unlimited.next_available_at is None
    blocked = measure(QuotaRule(0, "day"), "user", uses, us(NOW))
    assert blocked.blocked and blocked.remaining == 0 and blocked.next_available_at is None


def test_nothing_used_means_no_next_time() -> None:
    status = measure(QuotaRule(5, "week"), "guild", [], us(NOW))
    assert (status.used, status.remaining, status.next_available_at) == (0, 5, None)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 6),
    period=st.sampled_from(PERIODS),
    ages=st.lists(st.integers(0, 2 * HOUR * 24 * 7), max_size=12),
)
def test_next_available_at_is_exactly_when_a_clip_frees_up(
    limit: int, period: str, ages: list[int]
) -> None:
    rule = QuotaRule(limit, check_period(period))
    now = us(NOW)
    uses = [now - age for age in ages]
    status = measure(rule, "guild", uses, now)
    assert status.used >= 0 and status.remaining is not None and status.remaining >= 0
    assert status.remaining == max(0, limit - status.used)
    if status.exhausted:
        assert status.next_available_at is not None
        free_at = us(status.next_available_at)
        # At least one (several when clips were reserved at the same instant).
        assert (measure(rule, "guild", uses, free_at).remaining or 0) >= 1
        assert measure(rule, "guild", uses, free_at - 1).remaining == 0


def test_checks_reject_bad_limits_and_periods() -> None:
    assert check_limit(None) is None and check_limit(0) == 0
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            check_limit(bad)
    with pytest.raises(ValueError):
        check_period("month")
    with pytest.raises(ValueError):
        QuotaRule(-2, "day")


def test_rule_descriptions() -> None:
    assert QuotaRule(None, "day").describe() == "unlimited"
    assert QuotaRule(0, "day").describe() == "blocked"
    assert QuotaRule(1, "hour").describe() == "1 clip per hour"
    assert QuotaRule(5, "week").describe() == "5 clips per week"


def test_quota_exceeded_message_gives_the_discord_timestamp() -> None:
    at = NOW + timedelta(hours=3)
    error = QuotaExceeded(limit=5, used=5, period="day", next_available_at=at)
    assert error.user_message == (
        "You have used all 5 of your clips (each counts for 24 hours). "
        f"Your next clip is available <t:{int(at.timestamp())}:R>."
    )
    assert (error.limit, error.used, error.period, error.next_available_at) == (5, 5, "day", at)


def test_quota_exceeded_message_for_one_clip_and_for_blocked() -> None:
    assert QuotaExceeded(1, 1, "hour", None).user_message.startswith(
        "You have used your 1 clip (each counts for an hour)."
    )
    assert "turned off clips for you" in QuotaExceeded(0, 0, "day", None).user_message


def test_times_round_trip_exactly_and_naive_times_are_refused() -> None:
    when = datetime(2031, 7, 9, 1, 2, 3, 456789, tzinfo=UTC)
    assert from_micros(to_micros(when)) == when
    assert PERIOD_LENGTHS["week"] == timedelta(days=7)
    with pytest.raises(ValueError, match="aware"):
        to_micros(datetime(2026, 1, 1))

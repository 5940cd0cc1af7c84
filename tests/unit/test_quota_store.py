"""QuotaStore against an in-memory database, with a clock the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from storage.database import Database
from storage.errors import QuotaExceeded
from storage.quota_rules import QuotaRule
from storage.quotas import QuotaStore, RoleLimit
from storage.settings import GuildSettingsStore

GUILD, USER, OTHER, MOD = 100, 1, 2, 99
MEMBER_ROLE, VIP_ROLE = 10, 11


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    async with await Database.open(":memory:") as database:
        yield database


@pytest.fixture
def quotas(db: Database, clock: FakeClock) -> QuotaStore:
    settings = GuildSettingsStore(db, default_limit=3, default_period="day", clock=clock)
    return QuotaStore(db, settings=settings, clock=clock)


async def test_reserve_counts_down_and_refuses_the_last_plus_one(
    quotas: QuotaStore, clock: FakeClock
) -> None:
    first = await quotas.reserve(GUILD, USER, (), "j1")
    assert (first.limit, first.used, first.remaining, first.source) == (3, 1, 2, "guild")
    clock.advance(minutes=5)
    await quotas.reserve(GUILD, USER, (), "j2")
    last = await quotas.reserve(GUILD, USER, (), "j3")
    assert last.remaining == 0
    with pytest.raises(QuotaExceeded) as caught:
        await quotas.reserve(GUILD, USER, (), "j4")
    # The first clip, reserved at 12:00, leaves the day window at 12:00 the next day.
    assert caught.value.next_available_at == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert (caught.value.limit, caught.value.used) == (3, 3)
    assert await quotas.reservation_state("j4") is None
    # Another member is not affected.
    assert (await quotas.reserve(GUILD, OTHER, (), "o1")).remaining == 2


async def test_reserving_the_same_job_twice_holds_one_clip(quotas: QuotaStore) -> None:
    await quotas.reserve(GUILD, USER, (), "job")
    again = await quotas.reserve(GUILD, USER, (), "job")
    assert again.used == 1
    await quotas.charge("job")
    # A retry after a restart re-reserves the same job: still one clip, still charged.
    assert (await quotas.reserve(GUILD, USER, (), "job")).used == 1
    assert await quotas.reservation_state("job") == "charged"


async def test_charge_and_refund_are_idempotent(quotas: QuotaStore) -> None:
    await quotas.reserve(GUILD, USER, (), "a")
    await quotas.reserve(GUILD, USER, (), "b")
    assert await quotas.charge("a") is True
    assert await quotas.charge("a") is False
    # A delivered clip stays charged.
    assert await quotas.refund("a") is False
    assert await quotas.refund("b") is True
    assert await quotas.refund("b") is False
    # A refund is never taken back by a late charge.
    assert await quotas.charge("b") is False
    assert await quotas.refund("never-reserved") is False
    status = await quotas.status(GUILD, USER)
    assert (status.used, status.remaining) == (1, 2)


async def test_a_refunded_job_may_reserve_again(quotas: QuotaStore) -> None:
    await quotas.reserve(GUILD, USER, (), "job")
    await quotas.refund("job")
    assert (await quotas.reserve(GUILD, USER, (), "job")).used == 1
    assert await quotas.reservation_state("job") == "reserved"


async def test_a_job_id_cannot_move_to_another_member(quotas: QuotaStore) -> None:
    await quotas.reserve(GUILD, USER, (), "job")
    with pytest.raises(ValueError, match="another member"):
        await quotas.reserve(GUILD, OTHER, (), "job")


async def test_uses_leave_the_rolling_window(quotas: QuotaStore, clock: FakeClock) -> None:
    for n in range(3):
        await quotas.reserve(GUILD, USER, (), f"j{n}")
        clock.advance(hours=1)
    clock.advance(hours=20, minutes=59)
    assert (await quotas.status(GUILD, USER)).remaining == 0
    clock.advance(minutes=1)
    status = await quotas.status(GUILD, USER)
    assert (status.used, status.remaining) == (2, 1)
    assert status.next_available_at == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


async def test_user_override_with_its_own_period(quotas: QuotaStore, clock: FakeClock) -> None:
    old, new = await quotas.set_user_limit(GUILD, USER, 1, "hour", actor_id=MOD)
    assert (old, new) == (None, QuotaRule(1, "hour"))
    status = await quotas.reserve(GUILD, USER, (VIP_ROLE,), "a")
    assert (status.limit, status.period, status.source, status.remaining) == (1, "hour", "user", 0)
    with pytest.raises(QuotaExceeded):
        await quotas.reserve(GUILD, USER, (), "b")
    clock.advance(hours=1)
    await quotas.reserve(GUILD, USER, (), "b")
    assert await quotas.user_limit(GUILD, USER) == QuotaRule(1, "hour")
    assert await quotas.clear_user_limit(GUILD, USER, actor_id=MOD) == (QuotaRule(1, "hour"), None)
    assert (await quotas.status(GUILD, USER)).source == "guild"


async def test_blocked_and_unlimited(quotas: QuotaStore) -> None:
    await quotas.set_user_limit(GUILD, USER, 0, "day", actor_id=MOD)
    with pytest.raises(QuotaExceeded) as caught:
        await quotas.reserve(GUILD, USER, (), "a")
    assert caught.value.limit == 0 and caught.value.next_available_at is None
    await quotas.set_user_limit(GUILD, USER, None, "day", actor_id=MOD)
    for n in range(10):
        status = await quotas.reserve(GUILD, USER, (), f"u{n}")
    assert (status.limit, status.remaining, status.used) == (None, None, 10)


async def test_most_generous_role_applies(quotas: QuotaStore) -> None:
    assert await quotas.set_role_limit(GUILD, MEMBER_ROLE, 1, actor_id=MOD) == (
        None,
        RoleLimit(MEMBER_ROLE, 1),
    )
    await quotas.set_role_limit(GUILD, VIP_ROLE, 10, actor_id=MOD)
    both = await quotas.status(GUILD, USER, (MEMBER_ROLE, VIP_ROLE))
    assert (both.limit, both.source, both.period) == (10, "role", "day")
    member_only = await quotas.status(GUILD, USER, [MEMBER_ROLE])
    assert member_only.limit == 1
    # A role without a limit does not count; no limited role means the guild default.
    assert (await quotas.status(GUILD, USER, (12345,))).source == "guild"
    await quotas.set_role_limit(GUILD, VIP_ROLE, None, actor_id=MOD)
    assert (await quotas.status(GUILD, USER, (MEMBER_ROLE, VIP_ROLE))).unlimited
    assert await quotas.role_limits(GUILD) == [RoleLimit(MEMBER_ROLE, 1), RoleLimit(VIP_ROLE, None)]
    old, new = await quotas.clear_role_limit(GUILD, VIP_ROLE, actor_id=MOD)
    assert (old, new) == (RoleLimit(VIP_ROLE, None), None)
    assert (await quotas.status(GUILD, USER, (MEMBER_ROLE, VIP_ROLE))).limit == 1


async def test_guild_default_overrides_the_host_default(quotas: QuotaStore) -> None:
    old, new = await quotas.set_default(GUILD, 1, "week", actor_id=MOD)
    assert (old, new) == (QuotaRule(3, "day"), QuotaRule(1, "week"))
    status = await quotas.reserve(GUILD, USER, (), "a")
    assert (status.limit, status.period, status.remaining) == (1, "week", 0)
    # Other guilds keep the host default.
    assert (await quotas.status(GUILD + 1, USER)).limit == 3
    # Cleared, the host's default applies again (the one clip used this week now counts per day).
    assert await quotas.clear_default(GUILD, actor_id=MOD) == (
        QuotaRule(1, "week"),
        QuotaRule(3, "day"),
    )
    status = await quotas.status(GUILD, USER)
    assert (status.limit, status.period, status.remaining) == (3, "day", 2)
    # Nothing left to clear: nothing changes, nothing more is logged.
    assert await quotas.clear_default(GUILD, actor_id=MOD) == (None, QuotaRule(3, "day"))
    log = await quotas.audit_log(GUILD)
    assert [entry.action for entry in log] == ["quota.default.clear", "settings.update"]
    assert (log[0].old, log[0].new) == (
        {"limit": 1, "period": "week"},
        {"limit": 3, "period": "day"},
    )


async def test_reset_forgives_usage_and_keeps_in_flight_jobs_refund_neutral(
    quotas: QuotaStore,
) -> None:
    for job in ("a", "b", "c"):
        await quotas.reserve(GUILD, USER, (), job)
    await quotas.charge("a")
    assert await quotas.reset_user(GUILD, USER, actor_id=MOD) == (3, 0)
    assert (await quotas.status(GUILD, USER)).remaining == 3
    # "b" was still in flight: refunding it must not hand out a fourth clip.
    assert await quotas.refund("b") is True
    assert (await quotas.status(GUILD, USER)).remaining == 3
    # Retrying forgiven "c" does not charge it again.
    assert (await quotas.reserve(GUILD, USER, (), "c")).used == 0


async def test_lowering_the_limit_below_usage_reports_zero_left(quotas: QuotaStore) -> None:
    for job in ("a", "b", "c"):
        await quotas.reserve(GUILD, USER, (), job)
    await quotas.set_user_limit(GUILD, USER, 1, "day", actor_id=MOD)
    status = await quotas.status(GUILD, USER)
    assert (status.used, status.remaining) == (3, 0)


async def test_moderator_actions_are_audited_newest_first(
    quotas: QuotaStore, clock: FakeClock
) -> None:
    await quotas.set_user_limit(GUILD, USER, 2, "day", actor_id=MOD)
    clock.advance(minutes=1)
    await quotas.set_user_limit(GUILD, USER, None, "week", actor_id=MOD + 1)
    await quotas.set_role_limit(GUILD, VIP_ROLE, 0, actor_id=MOD)
    await quotas.reserve(GUILD, USER, (), "a")
    await quotas.reset_user(GUILD, USER, actor_id=MOD)
    await quotas.set_default(GUILD, 4, "hour", actor_id=MOD)
    await quotas.set_user_limit(GUILD + 1, USER, 1, "day", actor_id=MOD)

    entries = await quotas.audit_log(GUILD)
    assert [e.action for e in entries] == [
        "settings.update",
        "quota.user.reset",
        "quota.role.set",
        "quota.user.set",
        "quota.user.set",
    ]
    second = entries[3]
    assert (second.actor_id, second.target, second.created_at) == (
        MOD + 1,
        f"user:{USER}",
        clock.now,
    )
    assert second.old == {"limit": 2, "period": "day"}
    assert second.new == {"limit": None, "period": "week"}
    assert entries[-1].old is None
    assert (entries[1].old, entries[1].new) == ({"used": 1}, {"used": 0})
    assert entries[0].new == {"default_limit": 4, "default_period": "hour"}
    assert len(await quotas.audit_log(GUILD, limit=2)) == 2
    assert [e.action for e in await quotas.audit_log(GUILD + 1)] == ["quota.user.set"]


async def test_bad_limits_are_refused_before_anything_is_written(quotas: QuotaStore) -> None:
    with pytest.raises(ValueError):
        await quotas.set_user_limit(GUILD, USER, -1, "day", actor_id=MOD)
    with pytest.raises(ValueError):
        await quotas.set_user_limit(GUILD, USER, 1, "fortnight", actor_id=MOD)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await quotas.set_role_limit(GUILD, VIP_ROLE, -5, actor_id=MOD)
    assert await quotas.audit_log(GUILD) == []


async def test_real_discord_snowflakes_work_as_ids(quotas: QuotaStore) -> None:
    guild, user, role = 1_180_000_000_000_000_001, 987_654_321_098_765_432, 2**63 - 1
    await quotas.set_role_limit(guild, role, 7, actor_id=MOD)
    status = await quotas.reserve(guild, user, (role, role - 1), "job")
    assert (status.limit, status.used, status.source) == (7, 1, "role")
    assert (await quotas.status(guild, user, (role - 1,))).limit == 3


async def test_reset_gives_back_only_the_current_periods_clips(
    quotas: QuotaStore, clock: FakeClock
) -> None:
    await quotas.set_default(GUILD, 3, "hour", actor_id=MOD)
    for job in ("a", "b"):
        await quotas.reserve(GUILD, USER, (), job)
        await quotas.charge(job)
    clock.advance(hours=2)
    assert await quotas.reset_user(GUILD, USER, actor_id=MOD) == (0, 0)  # none in this hour
    # Lengthened later: the two clips of two hours ago count in the day, as they always did.
    await quotas.set_default(GUILD, 3, "day", actor_id=MOD)
    assert (await quotas.status(GUILD, USER)).used == 2


async def test_the_time_shown_for_the_next_clip_is_never_before_it_is_back(
    quotas: QuotaStore, clock: FakeClock
) -> None:
    await quotas.set_default(GUILD, 1, "hour", actor_id=MOD)
    clock.now = clock.now.replace(microsecond=500_000)
    await quotas.reserve(GUILD, USER, (), "a")
    with pytest.raises(QuotaExceeded) as caught:
        await quotas.reserve(GUILD, USER, (), "b")
    shown = int(caught.value.user_message.split("<t:")[1].split(":")[0])
    clock.now = datetime.fromtimestamp(shown, UTC)  # the second Discord shows
    await quotas.reserve(GUILD, USER, (), "b")  # the clip is there


async def test_settled_clips_are_forgotten_once_they_no_longer_count(
    quotas: QuotaStore, clock: FakeClock
) -> None:
    for job in ("charged", "refunded", "held"):
        await quotas.reserve(GUILD, USER, (), job)
    await quotas.charge("charged")
    await quotas.refund("refunded")
    clock.advance(days=3)
    # Asked to forget everything: what still counts (the last week, the longest period) stays.
    assert await quotas.forget_settled(clock.now) == 0
    assert (await quotas.status(GUILD, USER)).used == 0  # a day's period: none counts now
    clock.advance(days=5)
    assert await quotas.forget_settled(clock.now) == 2
    assert await quotas.reservation_state("charged") is None
    assert await quotas.reservation_state("held") == "reserved"  # in flight: kept
    assert await quotas.forget_settled(clock.now) == 0

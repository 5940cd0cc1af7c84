"""Property tests: for any sequence of reservations, charges, refunds, moderator changes and
time passing, the store agrees with a plain reference model, usage never goes negative, a
reservation never takes a member past their limit, and a refund restores exactly one clip."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from storage.database import Database
from storage.errors import QuotaExceeded
from storage.quota_rules import PERIOD_LENGTHS, PERIODS, Period, QuotaRule, QuotaStatus
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

T = TypeVar("T")
GUILD, MOD = 7, 999
# Each member's roles; role 10 and 11 overlap so "most generous" matters.
MEMBERS: dict[int, tuple[int, ...]] = {1: (10, 11), 2: (11,), 3: ()}
ROLES = (10, 11)

members = st.sampled_from(sorted(MEMBERS))
limits = st.none() | st.integers(0, 4)
periods = st.sampled_from(PERIODS)
# Mostly short steps (so hour windows expire), sometimes days (so day and week windows do).
time_steps = st.integers(1, 90).map(lambda m: timedelta(minutes=m)) | st.integers(1, 8).map(
    lambda d: timedelta(days=d)
)


@dataclass
class ModelUse:
    user_id: int
    reserved_at: datetime
    state: str  # "reserved", "charged", "refunded"
    forgiven: bool = False


class QuotaModel(RuleBasedStateMachine):
    """Each rule runs one store operation and checks its answer against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.db = self.run(Database.open(":memory:"))
        guilds = GuildSettingsStore(
            self.db, default_limit=2, default_period="hour", clock=lambda: self.now
        )
        self.store = QuotaStore(self.db, settings=guilds, clock=lambda: self.now)
        self.uses: dict[str, ModelUse] = {}
        self.overrides: dict[int, QuotaRule] = {}
        self.role_limits: dict[int, int | None] = {}
        self.default = QuotaRule(2, "hour")
        self.own_default = False  # the host's default applies
        self.next_id = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.db.close())
        self.loop.close()

    # ------------------------------------------------------------- the model

    def rule_for(self, user_id: int) -> QuotaRule:
        if user_id in self.overrides:
            return self.overrides[user_id]
        limits = [self.role_limits[r] for r in MEMBERS[user_id] if r in self.role_limits]
        if not limits:
            return self.default
        if None in limits:
            return QuotaRule(None, self.default.period)
        return QuotaRule(max(x for x in limits if x is not None), self.default.period)

    def counts(self, use: ModelUse) -> bool:
        window = PERIOD_LENGTHS[self.rule_for(use.user_id).period]
        return (
            use.state in ("reserved", "charged")
            and not use.forgiven
            and use.reserved_at > self.now - window
        )

    def used(self, user_id: int) -> int:
        return sum(1 for u in self.uses.values() if u.user_id == user_id and self.counts(u))

    def status(self, user_id: int) -> QuotaStatus:
        return self.run(self.store.status(GUILD, user_id, MEMBERS[user_id]))

    # ------------------------------------------------------------- members

    @initialize()
    def start(self) -> None:
        assert self.used(1) == 0

    def _reserve(self, user_id: int, job_id: str) -> None:
        before = self.used(user_id)
        limit = self.rule_for(user_id).limit
        existing = self.uses.get(job_id)
        holds = existing is not None and existing.state != "refunded"
        try:
            status = self.run(self.store.reserve(GUILD, user_id, MEMBERS[user_id], job_id))
        except QuotaExceeded as exc:
            assert not holds, "a job that holds a clip must not be refused"
            assert limit is not None and before >= limit
            assert exc.limit == limit and exc.used == before
            assert self.used(user_id) == before
            return
        if holds:
            assert status.used == before, "reserving a job twice must not charge twice"
            return
        assert limit is None or before < limit, "reserved past the limit"
        self.uses[job_id] = ModelUse(user_id, self.now, "reserved")
        assert status.used == before + 1
        assert status.limit is None or status.used <= status.limit

    @rule(user_id=members)
    def reserve_new(self, user_id: int) -> None:
        self.next_id += 1
        self._reserve(user_id, f"job{self.next_id}")

    @precondition(lambda self: bool(self.uses))
    @rule(data=st.data())
    def reserve_again(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.uses)))
        self._reserve(self.uses[job_id].user_id, job_id)

    @precondition(lambda self: bool(self.uses))
    @rule(data=st.data())
    def charge(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.uses)))
        use = self.uses[job_id]
        before = self.used(use.user_id)
        changed = self.run(self.store.charge(job_id))
        assert changed == (use.state == "reserved")
        if changed:
            use.state = "charged"
        assert self.used(use.user_id) == before

    @precondition(lambda self: bool(self.uses))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.uses)))
        use = self.uses[job_id]
        counted = self.counts(use)
        before = self.status(use.user_id).used
        changed = self.run(self.store.refund(job_id))
        assert changed == (use.state == "reserved")
        if changed:
            use.state = "refunded"
        after = self.status(use.user_id).used
        assert after == before - (1 if changed and counted else 0)

    @rule(step=time_steps)
    def time_passes(self, step: timedelta) -> None:
        self.now += step

    # ------------------------------------------------------------- moderators

    @rule(user_id=members, limit=limits, period=periods)
    def set_user_limit(self, user_id: int, limit: int | None, period: Period) -> None:
        old, new = self.run(self.store.set_user_limit(GUILD, user_id, limit, period, actor_id=MOD))
        assert old == self.overrides.get(user_id)
        self.overrides[user_id] = new

    @rule(user_id=members)
    def clear_user_limit(self, user_id: int) -> None:
        old, _ = self.run(self.store.clear_user_limit(GUILD, user_id, actor_id=MOD))
        assert old == self.overrides.pop(user_id, None)

    @rule(role_id=st.sampled_from(ROLES), limit=limits)
    def set_role_limit(self, role_id: int, limit: int | None) -> None:
        self.run(self.store.set_role_limit(GUILD, role_id, limit, actor_id=MOD))
        self.role_limits[role_id] = limit

    @rule(role_id=st.sampled_from(ROLES))
    def clear_role_limit(self, role_id: int) -> None:
        self.run(self.store.clear_role_limit(GUILD, role_id, actor_id=MOD))
        self.role_limits.pop(role_id, None)

    @rule(limit=limits, period=periods)
    def set_default(self, limit: int | None, period: Period) -> None:
        old, new = self.run(self.store.set_default(GUILD, limit, period, actor_id=MOD))
        assert old == self.default
        self.default, self.own_default = new, True

    @rule()
    def clear_default(self) -> None:
        old, host = self.run(self.store.clear_default(GUILD, actor_id=MOD))
        assert old == (self.default if self.own_default else None)
        assert host == QuotaRule(2, "hour")
        self.default, self.own_default = host, False

    @rule(user_id=members)
    def reset_user(self, user_id: int) -> None:
        before, after = self.run(self.store.reset_user(GUILD, user_id, actor_id=MOD))
        assert (before, after) == (self.used(user_id), 0)
        for use in self.uses.values():
            if use.user_id == user_id and use.state != "refunded":
                use.forgiven = True

    # ------------------------------------------------------------- always

    @invariant()
    def every_member_agrees_with_the_model(self) -> None:
        for user_id in MEMBERS:
            status = self.status(user_id)
            rule_ = self.rule_for(user_id)
            assert (status.limit, status.period) == (rule_.limit, rule_.period)
            assert status.used == self.used(user_id) >= 0
            if status.limit is None:
                assert status.remaining is None
            else:
                assert status.remaining == max(0, status.limit - status.used) >= 0


QuotaModel.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
TestQuotaModel = QuotaModel.TestCase

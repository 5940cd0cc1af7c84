"""Quotas in SQLite: atomic check-and-reserve, charge on delivery, refund on failure, and the
moderators' limits with their audit log. The rules themselves live in storage/quota_rules.py.

A reservation is one `quota_usage` row per job id: the job id is what makes every operation
idempotent. A job holds at most one clip at any time, however often it is reserved, charged,
refunded or retried after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import aiosqlite

from storage.audit import AuditEntry, read_entries, write_entry
from storage.clock import Clock, to_micros, utc_now
from storage.database import Database
from storage.errors import QuotaExceeded
from storage.quota_rules import (
    PERIODS,
    Period,
    QuotaRule,
    QuotaSource,
    QuotaStatus,
    check_limit,
    check_period,
    choose_rule,
    measure,
    period_micros,
)
from storage.settings import GuildSettingsStore

ReservationState = Literal["reserved", "charged", "refunded"]

# Everything reserve and status need to know about a member, in one statement (one consistent
# snapshot, one round trip to the database thread): their override, each of their roles' limits,
# the guild default, when each of their counted clips of the last week was reserved, and the
# job's own reservation if it has one (is it this member's?, its state). Role ids travel as one
# bound JSON array.
_MEMBER = """
    SELECT 'user', clip_limit, period FROM user_quotas
    WHERE guild_id = :guild AND user_id = :user
    UNION ALL
    SELECT 'role', clip_limit, NULL FROM role_quotas
    WHERE guild_id = :guild AND role_id IN (SELECT value FROM json_each(:roles))
    UNION ALL
    SELECT 'guild', clip_limit, period FROM guild_quotas WHERE guild_id = :guild
    UNION ALL
    SELECT 'use', reserved_at_us, NULL FROM quota_usage
    WHERE guild_id = :guild AND user_id = :user AND reserved_at_us > :since
      AND state IN ('reserved', 'charged') AND forgiven = 0
    UNION ALL
    SELECT 'job', guild_id = :guild AND user_id = :user, state FROM quota_usage
    WHERE job_id = :job
"""

# Hold a clip for the job, but only if the member's count is still the one the decision was made
# on (compare-and-set): a single statement takes SQLite's write lock before it reads, so this is
# atomic even against another process using the file. A refunded job takes a clip again; a job
# that holds one is left alone.
_TAKE = """
    INSERT INTO quota_usage (job_id, guild_id, user_id, state, reserved_at_us)
    SELECT :job, :guild, :user, 'reserved', :now
    WHERE (
        SELECT count(*) FROM quota_usage
        WHERE guild_id = :guild AND user_id = :user AND reserved_at_us > :window_start
          AND state IN ('reserved', 'charged') AND forgiven = 0
    ) = :used
    ON CONFLICT (job_id) DO UPDATE SET
        state = 'reserved',
        forgiven = 0,
        reserved_at_us = excluded.reserved_at_us,
        settled_at_us = NULL
    WHERE quota_usage.state = 'refunded'
"""
_LONGEST_PERIOD = max(period_micros(p) for p in PERIODS)
# Only another process changing the same member's clips between our read and write makes a
# reservation look again; this many times in a row means something is badly wrong.
_MAX_TRIES = 20


@dataclass(frozen=True)
class _Member:
    rule: QuotaRule
    source: QuotaSource
    # When each counted clip of the last week was reserved (measure() keeps the rule's window).
    counted: list[int]
    # The job's reservation: (belongs to this member, state), or None.
    own: tuple[bool, ReservationState] | None


@dataclass(frozen=True)
class RoleLimit:
    role_id: int
    # None: unlimited; 0: blocked. Counted in the guild's period.
    limit: int | None


class QuotaStore:
    """How many clips a member may make, and the bookkeeping of the ones they made."""

    def __init__(
        self, db: Database, *, settings: GuildSettingsStore, clock: Clock = utc_now
    ) -> None:
        self._db = db
        # The host's default quota comes from the guild settings store, so it is set in one place.
        self._settings = settings
        self._clock = clock

    # ------------------------------------------------------------ the members' side

    async def reserve(
        self, guild_id: int, user_id: int, role_ids: Iterable[int], job_id: str
    ) -> QuotaStatus:
        """Atomically check that the member has a clip left and hold it for `job_id`.

        Returns the status after the reservation. Raises `QuotaExceeded` (nothing held) when the
        member has none left or is blocked. Reserving a job that already holds a clip (or was
        charged for one) changes nothing; a refunded job may reserve again.
        """
        for _ in range(_MAX_TRIES):
            async with self._db.locked() as conn:
                now = to_micros(self._clock())
                member = await self._member(conn, guild_id, user_id, role_ids, job_id, now)
                status = measure(member.rule, member.source, member.counted, now)
                if member.own is not None:
                    same_member, state = member.own
                    if not same_member:
                        raise ValueError(f"job {job_id} is reserved for another member")
                    if state != "refunded":
                        return status
                if status.limit is not None and status.remaining == 0:
                    raise QuotaExceeded(
                        status.limit, status.used, status.period, status.next_available_at
                    )
                params = {
                    "job": job_id,
                    "guild": guild_id,
                    "user": user_id,
                    "now": now,
                    "window_start": now - period_micros(member.rule.period),
                    "used": status.used,
                }
                cursor = await conn.execute(_TAKE, params)
                if cursor.rowcount == 1:
                    return measure(member.rule, member.source, [*member.counted, now], now)
        raise RuntimeError(
            f"could not reserve a clip for job {job_id}: the database keeps changing"
        )

    async def charge(self, job_id: str) -> bool:
        """The clip was delivered: its reservation becomes a charge. True if it just did; False
        when already charged, refunded, or never reserved (a refund is never taken back)."""
        changed = await self._db.execute(
            """
            UPDATE quota_usage SET state = 'charged', settled_at_us = ?
            WHERE job_id = ? AND state = 'reserved'
            """,
            (to_micros(self._clock()), job_id),
        )
        return changed == 1

    async def refund(self, job_id: str) -> bool:
        """Give the job's clip back. True if a held reservation was released (the member has one
        more clip, unless a moderator's reset had already forgiven it); False when the job was
        already refunded, was charged (delivered clips stay charged), or never reserved."""
        changed = await self._db.execute(
            """
            UPDATE quota_usage SET state = 'refunded', settled_at_us = ?
            WHERE job_id = ? AND state = 'reserved'
            """,
            (to_micros(self._clock()), job_id),
        )
        return changed == 1

    async def status(
        self, guild_id: int, user_id: int, role_ids: Iterable[int] = ()
    ) -> QuotaStatus:
        async with self._db.locked() as conn:
            now = to_micros(self._clock())
            member = await self._member(conn, guild_id, user_id, role_ids, "", now)
        return measure(member.rule, member.source, member.counted, now)

    async def held(self) -> list[str]:
        """Jobs whose clip is reserved: neither charged nor refunded yet, oldest first."""
        rows = await self._db.fetch(
            "SELECT job_id FROM quota_usage WHERE state = 'reserved' ORDER BY reserved_at_us"
        )
        return [row[0] for row in rows]

    async def reservation_state(self, job_id: str) -> ReservationState | None:
        rows = await self._db.fetch("SELECT state FROM quota_usage WHERE job_id = ?", (job_id,))
        return rows[0][0] if rows else None

    # --------------------------------------------------------- the moderators' side

    async def set_user_limit(
        self, guild_id: int, user_id: int, limit: int | None, period: Period, *, actor_id: int
    ) -> tuple[QuotaRule | None, QuotaRule]:
        """Override the member's limit (None: unlimited, 0: blocked); returns (old, new)."""
        new = QuotaRule(check_limit(limit), check_period(period))
        at = self._clock()
        async with self._db.transaction() as conn:
            old = await _user_rule(conn, guild_id, user_id)
            await conn.execute(
                """
                INSERT INTO user_quotas (guild_id, user_id, clip_limit, period, updated_at_us)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (guild_id, user_id) DO UPDATE SET
                    clip_limit = excluded.clip_limit,
                    period = excluded.period,
                    updated_at_us = excluded.updated_at_us
                """,
                (guild_id, user_id, new.limit, new.period, to_micros(at)),
            )
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="quota.user.set",
                target=f"user:{user_id}",
                old=None if old is None else old.to_json(),
                new=new.to_json(),
                at=at,
            )
        return old, new

    async def clear_user_limit(
        self, guild_id: int, user_id: int, *, actor_id: int
    ) -> tuple[QuotaRule | None, None]:
        """Remove the member's override: their roles or the guild default apply again."""
        at = self._clock()
        async with self._db.transaction() as conn:
            old = await _user_rule(conn, guild_id, user_id)
            await conn.execute(
                "DELETE FROM user_quotas WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
            )
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="quota.user.clear",
                target=f"user:{user_id}",
                old=None if old is None else old.to_json(),
                new=None,
                at=at,
            )
        return old, None

    async def reset_user(self, guild_id: int, user_id: int, *, actor_id: int) -> tuple[int, int]:
        """Forgive the member's current usage (their clips stop counting); returns the number of
        clips used before and after (always 0). Clips still in progress stay refundable."""
        at = self._clock()
        now = to_micros(at)
        async with self._db.transaction() as conn:
            # The period does not depend on roles (a role limit counts in the guild's period).
            member = await self._member(conn, guild_id, user_id, (), "", now)
            before = measure(member.rule, member.source, member.counted, now).used
            # Only the current period's (and those being made): clips from before it were
            # not counting, and would be given back should the period later grow.
            await conn.execute(
                """
                UPDATE quota_usage SET forgiven = 1
                WHERE guild_id = ? AND user_id = ? AND forgiven = 0
                  AND (state = 'reserved' OR (state = 'charged' AND reserved_at_us > ?))
                """,
                (guild_id, user_id, now - period_micros(member.rule.period)),
            )
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="quota.user.reset",
                target=f"user:{user_id}",
                old={"used": before},
                new={"used": 0},
                at=at,
            )
        return before, 0

    async def set_role_limit(
        self, guild_id: int, role_id: int, limit: int | None, *, actor_id: int
    ) -> tuple[RoleLimit | None, RoleLimit]:
        """Give a role a limit (None: unlimited, 0: blocked) in the guild's period; a member gets
        the most generous of their roles'. Returns (old, new); `clear_role_limit` removes it."""
        new = RoleLimit(role_id, check_limit(limit))
        at = self._clock()
        async with self._db.transaction() as conn:
            old = await _role_limit(conn, guild_id, role_id)
            await conn.execute(
                """
                INSERT INTO role_quotas (guild_id, role_id, clip_limit, updated_at_us)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (guild_id, role_id) DO UPDATE SET
                    clip_limit = excluded.clip_limit,
                    updated_at_us = excluded.updated_at_us
                """,
                (guild_id, role_id, new.limit, to_micros(at)),
            )
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="quota.role.set",
                target=f"role:{role_id}",
                old=None if old is None else {"limit": old.limit},
                new={"limit": new.limit},
                at=at,
            )
        return old, new

    async def clear_role_limit(
        self, guild_id: int, role_id: int, *, actor_id: int
    ) -> tuple[RoleLimit | None, None]:
        at = self._clock()
        async with self._db.transaction() as conn:
            old = await _role_limit(conn, guild_id, role_id)
            await conn.execute(
                "DELETE FROM role_quotas WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
            )
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="quota.role.clear",
                target=f"role:{role_id}",
                old=None if old is None else {"limit": old.limit},
                new=None,
                at=at,
            )
        return old, None

    async def role_limits(self, guild_id: int) -> list[RoleLimit]:
        rows = await self._db.fetch(
            "SELECT role_id, clip_limit FROM role_quotas WHERE guild_id = ? ORDER BY role_id",
            (guild_id,),
        )
        return [RoleLimit(row[0], row[1]) for row in rows]

    async def user_limit(self, guild_id: int, user_id: int) -> QuotaRule | None:
        """The member's override, if a moderator set one."""
        rows = await self._db.fetch(
            "SELECT clip_limit, period FROM user_quotas WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return QuotaRule(rows[0][0], rows[0][1]) if rows else None

    async def set_default(
        self, guild_id: int, limit: int | None, period: Period, *, actor_id: int
    ) -> tuple[QuotaRule, QuotaRule]:
        """The guild's default quota (for members without override or limited role)."""
        old, new = await self._settings.update(
            guild_id, actor_id, default_limit=limit, default_period=period
        )
        return old.default_quota, new.default_quota

    async def clear_default(
        self, guild_id: int, *, actor_id: int
    ) -> tuple[QuotaRule | None, QuotaRule]:
        """Back to the host's default quota; returns (the guild's own one, None if it had none;
        the host's)."""
        return await self._settings.clear_default(guild_id, actor_id)

    async def record_moderation(
        self, guild_id: int, actor_id: int, action: str, user_id: int, job_id: str
    ) -> None:
        """A moderator's action on a member's clip ("clip.cancel", "clip.delete"), in the same
        log as their changes to limits, so moderators can see who did what to whose clip."""
        async with self._db.transaction() as conn:
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action=action,
                target=f"user:{user_id}",
                old={"job": job_id},
                new=None,
                at=self._clock(),
            )

    async def forget_settled(self, before: datetime, limit: int = 500) -> int:
        """Delete up to `limit` charged or refunded clips reserved before `before`, and never one
        that still counts (of the last week, the longest period); returns how many. Held ones
        stay. The moderators' audit log is kept whole."""
        cutoff = min(to_micros(before), to_micros(self._clock()) - _LONGEST_PERIOD)
        return await self._db.execute(
            "DELETE FROM quota_usage WHERE job_id IN (SELECT job_id FROM quota_usage "
            "WHERE state != 'reserved' AND reserved_at_us < ? LIMIT ?)",
            (cutoff, limit),
        )

    async def audit_log(self, guild_id: int, limit: int = 50) -> list[AuditEntry]:
        """The guild's latest moderator actions (quotas and settings), newest first."""
        return await read_entries(self._db, guild_id, limit)

    # ------------------------------------------------------------------- helpers

    async def _member(
        self,
        conn: aiosqlite.Connection,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        job_id: str,
        now: int,
    ) -> _Member:
        params = {
            "guild": guild_id,
            "user": user_id,
            "roles": json.dumps([int(r) for r in role_ids]),
            "since": now - _LONGEST_PERIOD,
            "job": job_id,
        }
        user: QuotaRule | None = None
        roles: list[int | None] = []
        guild = self._settings.host_quota
        counted: list[int] = []
        own: tuple[bool, ReservationState] | None = None
        for kind, number, text in await conn.execute_fetchall(_MEMBER, params):
            if kind == "use":
                counted.append(number)
            elif kind == "user":
                user = QuotaRule(number, text)
            elif kind == "role":
                roles.append(number)
            elif kind == "guild":
                guild = QuotaRule(number, text)
            else:
                own = (bool(number), text)
        rule, source = choose_rule(user, roles, guild)
        return _Member(rule, source, counted, own)


async def _user_rule(conn: aiosqlite.Connection, guild_id: int, user_id: int) -> QuotaRule | None:
    rows = list(
        await conn.execute_fetchall(
            "SELECT clip_limit, period FROM user_quotas WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
    )
    return QuotaRule(rows[0][0], rows[0][1]) if rows else None


async def _role_limit(conn: aiosqlite.Connection, guild_id: int, role_id: int) -> RoleLimit | None:
    rows = list(
        await conn.execute_fetchall(
            "SELECT clip_limit FROM role_quotas WHERE guild_id = ? AND role_id = ?",
            (guild_id, role_id),
        )
    )
    return RoleLimit(role_id, rows[0][0]) if rows else None

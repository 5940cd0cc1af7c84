"""Per-guild settings that moderators may change, over the host's defaults from the environment.

A guild that never changed a setting has no row and gets the host's defaults; a guild that changed
one keeps following the host for the others (a stored NULL means "the host's default").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import aiosqlite

from storage.audit import write_entry
from storage.clock import Clock, to_micros, utc_now
from storage.database import Database
from storage.quota_rules import Period, QuotaRule, check_limit, check_period

OutputFormat = Literal["mp4", "gif"]
MAX_STEPS_RANGE = (1, 50)

_SELECT = """
    SELECT s.max_steps, s.default_format, s.moderator_role_id,
           q.guild_id IS NOT NULL, q.clip_limit, q.period
    FROM (SELECT ? AS guild_id) AS g
    LEFT JOIN guild_settings AS s ON s.guild_id = g.guild_id
    LEFT JOIN guild_quotas AS q ON q.guild_id = g.guild_id
"""


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    # None: unlimited; 0: nobody may make clips unless a role or override allows it.
    default_limit: int | None
    default_period: Period
    max_steps: int
    default_format: OutputFormat
    moderator_role_id: int | None

    @property
    def default_quota(self) -> QuotaRule:
        return QuotaRule(self.default_limit, self.default_period)


class GuildSettingsStore:
    """Reads and changes guild settings; every change is written to the audit log."""

    FIELDS = frozenset(
        {"default_limit", "default_period", "max_steps", "default_format", "moderator_role_id"}
    )

    def __init__(
        self,
        db: Database,
        *,
        default_limit: int | None = 5,
        default_period: Period = "day",
        max_steps: int = 30,
        default_format: OutputFormat = "mp4",
        clock: Clock = utc_now,
    ) -> None:
        self._db = db
        self._clock = clock
        self._host = GuildSettings(
            guild_id=0,
            default_limit=check_limit(default_limit),
            default_period=check_period(default_period),
            max_steps=_check_steps(max_steps),
            default_format=_check_format(default_format),
            moderator_role_id=None,
        )

    @property
    def host_quota(self) -> QuotaRule:
        """The quota of a guild whose moderators never set one."""
        return self._host.default_quota

    async def get(self, guild_id: int) -> GuildSettings:
        rows = await self._db.fetch(_SELECT, (guild_id,))
        return self._effective(guild_id, tuple(rows[0]))

    async def update(
        self, guild_id: int, actor_id: int, **changes: Any
    ) -> tuple[GuildSettings, GuildSettings]:
        """Change some of `FIELDS`; returns (old, new) settings.

        `default_limit` None means unlimited; `max_steps` / `default_format` None go back to the
        host's default; `moderator_role_id` None means no moderator role. Setting either of
        `default_limit` / `default_period` fixes both for the guild (they are one rule).
        """
        unknown = set(changes) - self.FIELDS
        if unknown:
            raise TypeError(f"unknown guild settings: {', '.join(sorted(unknown))}")
        checked = _check_changes(changes)
        async with self._db.transaction() as conn:
            raw = await _raw(conn, guild_id)
            old = self._effective(guild_id, raw)
            if not checked:
                return old, old
            new = replace(old, **self._effective_changes(checked))
            at = self._clock()
            now = to_micros(at)
            if {"max_steps", "default_format", "moderator_role_id"} & checked.keys():
                # A field set back to None is stored as NULL, so it follows the host's default.
                stored = {
                    "max_steps": raw[0],
                    "default_format": raw[1],
                    "moderator_role_id": raw[2],
                }
                stored.update((k, v) for k, v in checked.items() if k in stored)
                await conn.execute(
                    """
                    INSERT INTO guild_settings (guild_id, max_steps, default_format,
                                                moderator_role_id, updated_at_us)
                    VALUES (:guild_id, :max_steps, :default_format, :moderator_role_id, :now)
                    ON CONFLICT (guild_id) DO UPDATE SET
                        max_steps = excluded.max_steps,
                        default_format = excluded.default_format,
                        moderator_role_id = excluded.moderator_role_id,
                        updated_at_us = excluded.updated_at_us
                    """,
                    {"guild_id": guild_id, "now": now, **stored},
                )
            if {"default_limit", "default_period"} & checked.keys():
                await conn.execute(
                    """
                    INSERT INTO guild_quotas (guild_id, clip_limit, period, updated_at_us)
                    VALUES (?, ?, ?, ?)
                    ON CONFLICT (guild_id) DO UPDATE SET
                        clip_limit = excluded.clip_limit,
                        period = excluded.period,
                        updated_at_us = excluded.updated_at_us
                    """,
                    (guild_id, new.default_limit, new.default_period, now),
                )
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="settings.update",
                target="guild",
                old={name: getattr(old, name) for name in sorted(checked)},
                new={name: getattr(new, name) for name in sorted(checked)},
                at=at,
            )
        return old, new

    async def clear_default(
        self, guild_id: int, actor_id: int
    ) -> tuple[QuotaRule | None, QuotaRule]:
        """Forget the guild's own default quota: the host's (from the environment) applies again,
        and follows the host when it changes. Returns (the guild's own default, None when it had
        none: nothing changed and nothing is logged; the host's)."""
        async with self._db.transaction() as conn:
            raw = await _raw(conn, guild_id)
            host = self._host.default_quota
            if not raw[3]:
                return None, host
            old = self._effective(guild_id, raw).default_quota
            await conn.execute("DELETE FROM guild_quotas WHERE guild_id = ?", (guild_id,))
            await write_entry(
                conn,
                guild_id=guild_id,
                actor_id=actor_id,
                action="quota.default.clear",
                target="guild",
                old={"limit": old.limit, "period": old.period},
                new={"limit": host.limit, "period": host.period},
                at=self._clock(),
            )
        return old, host

    def _effective_changes(self, checked: dict[str, Any]) -> dict[str, Any]:
        """`checked` changes as effective values: None for steps / format means the host's."""
        effective = dict(checked)
        for name in ("max_steps", "default_format"):
            if name in effective and effective[name] is None:
                effective[name] = getattr(self._host, name)
        return effective

    def _effective(self, guild_id: int, raw: tuple[Any, ...]) -> GuildSettings:
        max_steps, default_format, moderator_role_id, has_quota, clip_limit, period = raw
        host = self._host
        return replace(
            host,
            guild_id=guild_id,
            max_steps=host.max_steps if max_steps is None else max_steps,
            default_format=host.default_format if default_format is None else default_format,
            moderator_role_id=moderator_role_id,
            default_limit=clip_limit if has_quota else host.default_limit,
            default_period=period if has_quota else host.default_period,
        )


async def _raw(conn: aiosqlite.Connection, guild_id: int) -> tuple[Any, ...]:
    rows = list(await conn.execute_fetchall(_SELECT, (guild_id,)))
    return tuple(rows[0])


def _check_changes(changes: dict[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "default_limit":
            checked[name] = check_limit(value)
        elif name == "default_period":
            checked[name] = check_period(value)
        elif name == "max_steps":
            checked[name] = None if value is None else _check_steps(value)
        elif name == "default_format":
            checked[name] = None if value is None else _check_format(value)
        elif name == "moderator_role_id":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"moderator_role_id is a role id or None, not {value!r}")
            checked[name] = value
    return checked


def _check_steps(value: object) -> int:
    low, high = MAX_STEPS_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"max_steps is a whole number from {low} to {high}, not {value!r}")
    return value


def _check_format(value: object) -> OutputFormat:
    if value == "mp4":
        return "mp4"
    if value == "gif":
        return "gif"
    raise ValueError(f"default_format is 'mp4' or 'gif', not {value!r}")

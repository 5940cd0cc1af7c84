"""The moderators' audit log: who changed what, when, from which value to which.

Entries are written inside the transaction that makes the change, so the log can never miss a
change nor record one that was rolled back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from storage.clock import from_micros, to_micros
from storage.database import Database


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int
    actor_id: int
    # e.g. "quota.user.set", "quota.role.clear", "quota.user.reset", "settings.update".
    action: str
    # "user:<id>", "role:<id>" or "guild".
    target: str
    # JSON values as written (dicts of plain values); None when there was nothing before/after.
    old: Any
    new: Any
    created_at: datetime


async def write_entry(
    conn: aiosqlite.Connection,
    *,
    guild_id: int,
    actor_id: int,
    action: str,
    target: str,
    old: Any,
    new: Any,
    at: datetime,
) -> None:
    """Append an entry; call inside the transaction that makes the change."""
    await conn.execute(
        """
        INSERT INTO audit_log (guild_id, actor_id, action, target, old_value, new_value,
                               created_at_us)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        """,
        (guild_id, actor_id, action, target, _dump(old), _dump(new), to_micros(at)),
    )


async def read_entries(db: Database, guild_id: int, limit: int = 50) -> list[AuditEntry]:
    """The guild's latest `limit` entries, newest first."""
    rows = await db.fetch(
        """
        SELECT id, guild_id, actor_id, action, target, old_value, new_value, created_at_us
        FROM audit_log
        WHERE guild_id = ?
        ORDER BY id DESC
        LIMIT ?
        """,
        (guild_id, max(0, limit)),
    )
    return [
        AuditEntry(
            id=row[0],
            guild_id=row[1],
            actor_id=row[2],
            action=row[3],
            target=row[4],
            old=_load(row[5]),
            new=_load(row[6]),
            created_at=from_micros(row[7]),
        )
        for row in rows
    ]


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)

"""Members' own defaults for /animate: what a member gets when they type no option for it.

A typed option wins over the member's default, which wins over the server's (format) and the
built-in ones. One row per member, for every server: taste in format or motion is a person's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from storage.clock import Clock, to_micros, utc_now
from storage.database import Database

_COLUMNS = (
    "preset",
    "motion_bucket_id",
    "format",
    "fps",
    "quality",
    "ping_pong",
    "interpolate",
    "fit",
)
# Stored as 1 or NULL: SQLite has no booleans.
_FLAGS = frozenset({"ping_pong", "interpolate"})
# What every clip gets anyway: set as a default, it is none of the member's own (as if never
# set), so no row is kept for it and nothing is marked as theirs.
_BUILT_IN: dict[str, Any] = {"ping_pong": False, "interpolate": False, "fit": "crop"}
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM member_defaults WHERE user_id = ?"


@dataclass(frozen=True)
class MemberDefaults:
    """None: no default of the member's own for that option. Field names are AnimateOptions'
    (and its `quality`), so they can be handed on as they are."""

    user_id: int
    preset: str | None = None
    motion_bucket_id: int | None = None
    format: Literal["mp4", "gif"] | None = None
    fps: int | None = None
    quality: Literal["best", "draft"] | None = None
    # True or None: only "on" is a default of the member's own.
    ping_pong: bool | None = None
    interpolate: bool | None = None
    fit: Literal["crop", "whole"] | None = None

    def chosen(self) -> dict[str, Any]:
        """The options the member set, by name."""
        return {name: getattr(self, name) for name in _COLUMNS if getattr(self, name) is not None}


FIELDS = frozenset(f.name for f in fields(MemberDefaults)) - {"user_id"}


class MemberDefaultsStore:
    def __init__(self, db: Database, *, clock: Clock = utc_now) -> None:
        self._db = db
        self._clock = clock

    async def get(self, user_id: int) -> MemberDefaults:
        rows = await self._db.fetch(_SELECT, (user_id,))
        if not rows:
            return MemberDefaults(user_id)
        return _from_row(user_id, rows[0])

    async def update(self, user_id: int, *, reset: bool = False, **changes: Any) -> MemberDefaults:
        """Set the options in `changes` (the others stay as they were, or all go first with
        `reset`); returns the member's defaults now. The caller checks the values' ranges (the
        table refuses any outside them)."""
        unknown = set(changes) - FIELDS
        if unknown:
            raise TypeError(f"unknown member defaults: {', '.join(sorted(unknown))}")
        async with self._db.transaction() as conn:
            rows = list(await conn.execute_fetchall(_SELECT, (user_id,)))
            old = MemberDefaults(user_id) if reset or not rows else _from_row(user_id, rows[0])
            built_in = {k: None for k, v in _BUILT_IN.items() if k in changes and changes[k] == v}
            new = replace(old, **(changes | built_in))
            if not new.chosen():
                # Nothing of their own left: no row, as for a member who never set one.
                await conn.execute("DELETE FROM member_defaults WHERE user_id = ?", (user_id,))
                return new
            await conn.execute(
                f"""
                INSERT INTO member_defaults (user_id, {", ".join(_COLUMNS)}, updated_at_us)
                VALUES (?, {", ".join("?" for _ in _COLUMNS)}, ?)
                ON CONFLICT (user_id) DO UPDATE SET
                    {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS)},
                    updated_at_us = excluded.updated_at_us
                """,
                (user_id, *(_stored(new, c) for c in _COLUMNS), to_micros(self._clock())),
            )
        return new


def _from_row(user_id: int, row: Sequence[Any]) -> MemberDefaults:
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in _FLAGS:
        values[name] = True if values[name] else None
    return MemberDefaults(user_id, **values)


def _stored(defaults: MemberDefaults, column: str) -> Any:
    value = getattr(defaults, column)
    return 1 if column in _FLAGS and value else value

"""Migrations: any earlier file upgrades to the latest schema with its data; newer ones are
refused (see test_storage_database.py); a failing migration leaves the file as it was."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from storage import migrations
from storage.database import Database
from storage.jobs import JobState, JobStore
from storage.member_defaults import MemberDefaultsStore
from storage.migrations import LATEST_VERSION, MIGRATIONS, Migration, migrate, user_version
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    raw.close()
    return names - {"sqlite_sequence"}


def test_migrations_are_numbered_one_by_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == len(MIGRATIONS)


async def test_an_empty_file_is_brought_to_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    path.touch()
    async with await Database.open(path) as db:
        assert await db.schema_version() == LATEST_VERSION
    assert {"quota_usage", "jobs", "job_events", "guild_settings", "audit_log"} <= tables(path)


async def write_old_data(conn: aiosqlite.Connection, version: int) -> None:
    """Rows as a bot at `version` would have written them, with that version's SQL."""
    if version >= 1:
        await conn.execute(
            "INSERT INTO quota_usage (job_id, guild_id, user_id, state, reserved_at_us) "
            "VALUES ('old-job', 1, 2, 'reserved', strftime('%s', 'now') * 1000000)"
        )
        await conn.execute(
            "INSERT INTO user_quotas (guild_id, user_id, clip_limit, period, updated_at_us) "
            "VALUES (1, 2, 4, 'day', 0)"
        )
    if version >= 2:
        await conn.execute(
            "INSERT INTO jobs (job_id, guild_id, channel_id, user_id, state, created_at_us) "
            "VALUES ('old-job', 1, 3, 2, 'running', 0)"
        )
    if version >= 6:
        await conn.execute(
            "INSERT INTO member_defaults (user_id, format, updated_at_us) VALUES (2, 'gif', 0)"
        )


@pytest.mark.parametrize("version", range(LATEST_VERSION))
async def test_every_earlier_version_upgrades_with_its_data(tmp_path: Path, version: int) -> None:
    path = tmp_path / "bot.sqlite3"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=version) == version
        await write_old_data(conn, version)

    async with await Database.open(path) as db:
        assert await db.schema_version() == LATEST_VERSION
        quotas = QuotaStore(db, settings=GuildSettingsStore(db))
        status = await quotas.status(1, 2)
        if version >= 1:
            assert (status.limit, status.used, status.source) == (4, 1, "user")
        jobs = JobStore(db)
        if version >= 2:
            [job] = await jobs.unfinished()
            assert (job.job_id, job.state) == ("old-job", JobState.RUNNING)
        defaults = MemberDefaultsStore(db)
        if version >= 6:
            assert (await defaults.get(2)).chosen() == {"format": "gif"}
        # The upgraded file takes new writes in every table.
        await defaults.update(2, ping_pong=True)
        await quotas.reserve(1, 5, (), "new-job")
        await GuildSettingsStore(db).update(1, 9, max_steps=20)


async def test_a_failing_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = Migration(
        LATEST_VERSION + 1,
        "half of this must not stay",
        ("CREATE TABLE half_done (x)", "THIS IS NOT SQL"),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, broken))
    path = tmp_path / "bot.sqlite3"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        with pytest.raises(sqlite3.OperationalError):
            await migrate(conn, target=LATEST_VERSION + 1)
        assert await user_version(conn) == LATEST_VERSION
    assert "half_done" not in tables(path)


async def test_two_connections_opening_a_new_file_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    first, second = await asyncio.gather(Database.open(path), Database.open(path))
    try:
        assert await first.schema_version() == await second.schema_version() == LATEST_VERSION
    finally:
        await first.close()
        await second.close()

"""Opening the database file: configuration, refusal of files we must not touch, transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storage.database import Database
from storage.errors import DatabaseUnreadable, SchemaTooNew
from storage.migrations import LATEST_VERSION


async def pragma(db: Database, name: str) -> object:
    rows = await db.fetch(f"PRAGMA {name}")
    return rows[0][0]


async def test_open_creates_the_folder_and_configures_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "bot.sqlite3"
    async with await Database.open(path) as db:
        assert path.exists()
        assert await pragma(db, "journal_mode") == "wal"
        assert await pragma(db, "foreign_keys") == 1
        assert await pragma(db, "busy_timeout") == 30_000
        assert await pragma(db, "synchronous") == 1  # NORMAL
        assert await db.schema_version() == LATEST_VERSION


async def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    async with await Database.open(tmp_path / "bot.sqlite3") as db:
        with pytest.raises(sqlite3.IntegrityError):
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO job_events (job_id, state, at_us) VALUES ('nope', 'queued', 0)"
                )


async def test_data_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Database.open(path) as db:
        await db.execute(
            "INSERT INTO role_quotas (guild_id, role_id, clip_limit, updated_at_us) "
            "VALUES (?, ?, ?, ?)",
            (1, 2, 3, 4),
        )
    async with await Database.open(path) as db:
        assert [tuple(r) for r in await db.fetch("SELECT clip_limit FROM role_quotas")] == [(3,)]


def file_state(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, and whether a WAL file was started beside it."""
    return path.read_bytes(), Path(f"{path}-wal").exists()


async def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE from_the_future (x)")
        raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    raw.close()
    before = file_state(path)
    with pytest.raises(SchemaTooNew) as caught:
        await Database.open(path)
    assert (caught.value.found, caught.value.supported) == (LATEST_VERSION + 1, LATEST_VERSION)
    assert "newer version" in caught.value.user_message
    assert "Upgrade the bot" in caught.value.user_message
    assert file_state(path) == before == (before[0], False)


async def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"these are not the bytes of a SQLite database" * 100)
    with pytest.raises(DatabaseUnreadable) as caught:
        await Database.open(path)
    assert str(path) in caught.value.user_message


async def test_a_failed_transaction_rolls_back_and_the_next_one_works() -> None:
    async with await Database.open(":memory:") as db:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO guild_quotas (guild_id, clip_limit, period, updated_at_us) "
                    "VALUES (1, 1, 'day', 0)"
                )
                raise RuntimeError("boom")
        assert await db.fetch("SELECT * FROM guild_quotas") == []
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO guild_quotas (guild_id, clip_limit, period, updated_at_us) "
                "VALUES (1, 1, 'day', 0)"
            )
        assert len(await db.fetch("SELECT * FROM guild_quotas")) == 1


async def test_a_task_cancelled_inside_a_transaction_leaves_the_connection_usable() -> None:
    async with await Database.open(":memory:") as db:
        entered = asyncio.Event()

        async def slow_writer() -> None:
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO guild_quotas (guild_id, clip_limit, period, updated_at_us) "
                    "VALUES (1, 1, 'day', 0)"
                )
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(slow_writer())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.fetch("SELECT * FROM guild_quotas") == []
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO guild_quotas (guild_id, clip_limit, period, updated_at_us) "
                "VALUES (2, 1, 'day', 0)"
            )
        assert len(await db.fetch("SELECT * FROM guild_quotas")) == 1

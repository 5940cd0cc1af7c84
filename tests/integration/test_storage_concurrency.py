"""Races for the last clips: exactly as many reservations succeed as there are clips left, on one
connection and across two connections to the same file (as two bot processes would)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.database import Database
from storage.errors import QuotaExceeded
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

GUILD, USER = 1, 2


def store(db: Database) -> QuotaStore:
    return QuotaStore(db, settings=GuildSettingsStore(db, default_limit=5, default_period="day"))


async def race(quotas: list[QuotaStore], attempts: int) -> tuple[int, int]:
    results = await asyncio.gather(
        *(quotas[n % len(quotas)].reserve(GUILD, USER, (), f"race-{n}") for n in range(attempts)),
        return_exceptions=True,
    )
    unexpected = [r for r in results if isinstance(r, BaseException)]
    unexpected = [r for r in unexpected if not isinstance(r, QuotaExceeded)]
    assert not unexpected, unexpected
    won = sum(1 for r in results if not isinstance(r, BaseException))
    return won, len(results) - won


async def test_fifty_concurrent_reservations_for_three_clips_give_three(tmp_path: Path) -> None:
    async with await Database.open(tmp_path / "bot.sqlite3") as db:
        quotas = store(db)
        await quotas.reserve(GUILD, USER, (), "earlier-1")
        await quotas.reserve(GUILD, USER, (), "earlier-2")
        assert (await quotas.status(GUILD, USER)).remaining == 3

        assert await race([quotas], 50) == (3, 47)
        status = await quotas.status(GUILD, USER)
        assert (status.used, status.remaining) == (5, 0)
        rows = await db.fetch(
            "SELECT count(*) FROM quota_usage WHERE user_id = ? AND state = 'reserved'", (USER,)
        )
        assert rows[0][0] == 5


async def test_two_connections_racing_still_give_exactly_the_clips_left(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Database.open(path) as first, await Database.open(path) as second:
        quotas = [store(first), store(second)]
        await quotas[0].reserve(GUILD, USER, (), "earlier-1")
        await quotas[1].reserve(GUILD, USER, (), "earlier-2")
        assert await race(quotas, 50) == (3, 47)
        assert (await quotas[1].status(GUILD, USER)).used == 5


async def test_the_same_job_reserved_concurrently_holds_one_clip(tmp_path: Path) -> None:
    async with await Database.open(tmp_path / "bot.sqlite3") as db:
        quotas = store(db)
        results = await asyncio.gather(
            *(quotas.reserve(GUILD, USER, (), "the-job") for _ in range(20))
        )
        assert {r.used for r in results} == {1}
        assert (await quotas.status(GUILD, USER)).remaining == 4

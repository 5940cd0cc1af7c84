"""GuildSettingsStore: host defaults until a moderator changes them, audited changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.database import Database
from storage.quotas import QuotaStore
from storage.settings import GuildSettings, GuildSettingsStore

GUILD, MOD = 42, 7


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with await Database.open(tmp_path / "bot.sqlite3") as database:
        yield database


@pytest.fixture
def guilds(db: Database) -> GuildSettingsStore:
    return GuildSettingsStore(
        db, default_limit=5, default_period="day", max_steps=30, default_format="mp4"
    )


async def test_a_new_guild_gets_the_host_defaults(guilds: GuildSettingsStore) -> None:
    assert await guilds.get(GUILD) == GuildSettings(
        guild_id=GUILD,
        default_limit=5,
        default_period="day",
        max_steps=30,
        default_format="mp4",
        moderator_role_id=None,
    )


async def test_changes_return_old_and_new_and_are_audited(
    db: Database, guilds: GuildSettingsStore
) -> None:
    old, new = await guilds.update(GUILD, MOD, max_steps=20, moderator_role_id=555)
    assert (old.max_steps, new.max_steps, new.moderator_role_id) == (30, 20, 555)
    assert await guilds.get(GUILD) == new
    assert (await guilds.get(GUILD + 1)).max_steps == 30
    [entry] = await QuotaStore(db, settings=guilds).audit_log(GUILD)
    assert (entry.action, entry.actor_id, entry.target) == ("settings.update", MOD, "guild")
    assert entry.old == {"max_steps": 30, "moderator_role_id": None}
    assert entry.new == {"max_steps": 20, "moderator_role_id": 555}


async def test_unchanged_fields_keep_following_the_host(db: Database) -> None:
    first = GuildSettingsStore(db, max_steps=30, default_format="mp4")
    await first.update(GUILD, MOD, default_format="gif")
    # The host raises its step cap later: the guild that only changed its format follows.
    later = GuildSettingsStore(db, max_steps=40, default_format="mp4")
    settings = await later.get(GUILD)
    assert (settings.max_steps, settings.default_format) == (40, "gif")
    _, back = await later.update(GUILD, MOD, default_format=None)
    assert back.default_format == "mp4"


async def test_the_default_quota_is_one_rule(guilds: GuildSettingsStore) -> None:
    # Changing only the period keeps the current limit (the host's 5), now fixed for the guild.
    _, new = await guilds.update(GUILD, MOD, default_period="week")
    assert (new.default_limit, new.default_period) == (5, "week")
    _, unlimited = await guilds.update(GUILD, MOD, default_limit=None)
    assert (unlimited.default_limit, unlimited.default_period) == (None, "week")
    assert (await guilds.get(GUILD)).default_quota.describe() == "unlimited"


async def test_invalid_changes_are_refused(db: Database, guilds: GuildSettingsStore) -> None:
    for bad in ({"max_steps": 0}, {"max_steps": 51}, {"default_format": "webm"}):
        with pytest.raises(ValueError):
            await guilds.update(GUILD, MOD, **bad)
    with pytest.raises(ValueError):
        await guilds.update(GUILD, MOD, default_limit=-1)
    with pytest.raises(TypeError, match="colour"):
        await guilds.update(GUILD, MOD, colour="red")
    with pytest.raises(ValueError):
        GuildSettingsStore(db, max_steps=99)
    assert (await guilds.get(GUILD)).max_steps == 30


async def test_an_empty_update_changes_and_logs_nothing(
    db: Database, guilds: GuildSettingsStore
) -> None:
    old, new = await guilds.update(GUILD, MOD)
    assert old == new
    assert await QuotaStore(db, settings=guilds).audit_log(GUILD) == []

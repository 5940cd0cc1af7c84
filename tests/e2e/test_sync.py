"""`svd-bot sync` registers the slash commands, often while the bot itself runs on the same data:
it must touch nothing of the clips that bot is making."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from PIL import Image

from bot.app import sync_commands
from storage.database import Database
from storage.jobs import JobRecord, JobState, JobStore
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore
from tests.e2e.test_bot import eventually, running, settings_for
from tests.fakes.discord_server import FakeDiscordServer


async def test_sync_beside_a_running_bot_leaves_its_clips_alone(
    fake_discord: FakeDiscordServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "inputs").mkdir(parents=True)
    settings = settings_for(fake_discord, tmp_path / "model", data)
    database = await Database.open(settings.database_path)
    jobs = JobStore(database)
    quotas = QuotaStore(database, settings=GuildSettingsStore(database))
    # The running bot is making one clip (its first try) and another (its second try).
    for job_id, attempts in (("a" * 32, 1), ("b" * 32, 2)):
        picture = data / "inputs" / f"{job_id}.png"
        Image.new("RGB", (256, 144)).save(picture)
        record = JobRecord(
            job_id=job_id,
            guild_id=fake_discord.guild.id,
            channel_id=fake_discord.channel.id,
            user_id=fake_discord.user.id,
            input_path=str(picture),
            max_bytes=10 << 20,
            options={"num_inference_steps": 3},
            attempts=attempts,
        )
        await jobs.create(record)
        await quotas.reserve(fake_discord.guild.id, fake_discord.user.id, (), job_id)
        await jobs.set_state(job_id, JobState.RUNNING)
    await database.close()

    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    names = await sync_commands(settings, token, fake_discord.guild.id)
    assert {"animate", "queue", "cancel", "quota"} <= set(names)

    database = await Database.open(settings.database_path)
    try:
        jobs, quotas = (
            JobStore(database),
            QuotaStore(database, settings=GuildSettingsStore(database)),
        )
        for job_id in ("a" * 32, "b" * 32):
            record = await jobs.get(job_id)
            assert record is not None and record.state is JobState.RUNNING, record
            assert await quotas.reservation_state(job_id) == "reserved"
    finally:
        await database.close()
    assert fake_discord.messages() == []  # nobody was told anything


async def test_a_bot_whose_commands_were_never_registered_tells_the_host_how(
    fake_discord: FakeDiscordServer,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, tmp_path / "data")

    def warned() -> bool:
        return any("sync --guild" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="bot.client"):
        async with running(settings):
            await eventually(warned, 10)
    caplog.clear()
    # Registered for the one server (as the README's first steps do): no warning next time.
    fake_discord.world.global_commands.clear()
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    await sync_commands(settings, token, fake_discord.guild.id)
    with caplog.at_level(logging.WARNING, logger="bot.client"):
        async with running(settings, until_ready=True) as app:
            await asyncio.sleep(0.5)  # on_ready's look has been answered
            assert app.bot.is_ready()
    assert not warned()

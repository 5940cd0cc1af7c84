"""The presenter's sense of how old a job is, which decides how long it waits for the command's
own flow to post the progress message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import discord

from bot.presenter import COMMAND_FLOW_WAIT, _since_queued
from storage.jobs import JobRecord


def _job(created_at: datetime) -> JobRecord:
    now_id = discord.utils.time_snowflake(datetime.now(UTC))
    return JobRecord(
        job_id="a" * 32,
        guild_id=1,
        channel_id=2,
        user_id=3,
        interaction_id=now_id,
        created_at=created_at,
    )


def test_a_job_just_queued_is_young_and_one_from_before_a_clock_jump_back_is_not() -> None:
    assert _since_queued(_job(datetime.now(UTC))) < COMMAND_FLOW_WAIT
    # The clock was set back an hour after the job was recorded (a reboot before NTP): its
    # age is negative, and waiting until it reached 10 s held every member's messages up.
    assert _since_queued(_job(datetime.now(UTC) + timedelta(hours=1))) >= COMMAND_FLOW_WAIT
    # A correction of a moment (NTP's slew) is just now: the flow may still post its message.
    assert _since_queued(_job(datetime.now(UTC) + timedelta(seconds=1))) < COMMAND_FLOW_WAIT

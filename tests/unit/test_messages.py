"""The words members read."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from bot import messages
from bot.cogs.admin import LimitError, parse_limit
from storage.audit import AuditEntry
from storage.jobs import JobRecord
from storage.quota_rules import QuotaStatus


def test_bar_fills_with_progress() -> None:
    assert messages.bar(0, 25, width=10) == "▱" * 10
    assert messages.bar(25, 25, width=10) == "▰" * 10
    assert messages.bar(12, 24, width=10) == "▰" * 5 + "▱" * 5


def test_durations_are_rounded_estimates() -> None:
    assert messages.duration(0.2) == "about 1 s"
    assert messages.duration(42) == "about 42 s"
    assert messages.duration(150) == "about 2 min"
    assert messages.duration(None) == "a moment"


def test_quota_text_says_what_remains_and_when_the_next_clip_is_back() -> None:
    back = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    status = QuotaStatus(
        limit=5, used=5, remaining=0, period="day", next_available_at=back, source="guild"
    )
    text = messages.quota_text(status)
    assert "**0** of 5 clips left (each counts for 24 hours)" in text
    assert f"<t:{int(back.timestamp())}:R>" in text
    # A moderator reading someone else's: "<@42> has", and one clip is "1 clip".
    one = replace(status, limit=1, used=0, remaining=1, next_available_at=None)
    assert messages.quota_text(one, subject="<@42>") == (
        "🎟️ <@42> has **1** of 1 clip left (each counts for 24 hours)."
    )
    unlimited = QuotaStatus(
        limit=None, used=3, remaining=None, period="day", next_available_at=None, source="role"
    )
    assert "unlimited" in messages.quota_text(unlimited)
    blocked = QuotaStatus(
        limit=0, used=0, remaining=0, period="day", next_available_at=None, source="user"
    )
    assert "cannot make clips" in messages.quota_text(blocked)


def test_limits_parse_numbers_and_unlimited() -> None:
    assert parse_limit("5") == 5
    assert parse_limit(" Unlimited ") is None
    assert parse_limit("0") == 0
    with pytest.raises(LimitError) as info:
        parse_limit("-3")
    assert "whole number" in info.value.user_message


def test_long_text_is_cut_to_discords_limit() -> None:
    assert len(messages.truncate("x" * 5000)) == messages.MAX_CONTENT


def test_queue_counts_clips_made_on_several_gpus_and_says_when_none_is_connected() -> None:
    from generation.jobs import QueueSnapshot, RunningJob, WaitingJob

    running = tuple(RunningJob(f"r{i}", i, 1, "generating", 3, 25, 4.0) for i in range(3))
    waiting = (WaitingJob("w1", 9, 1, 1, 12.0, 625),)
    busy = messages.queue_text([], QueueSnapshot("ready", waiting, running))
    assert busy.startswith("📋 1 clip waiting in total, 3 being made.")
    assert "No GPU worker" not in busy
    idle = messages.queue_text([], QueueSnapshot("no_workers", waiting, ()))
    assert "No GPU worker is connected right now" in idle


def test_a_clip_on_hold_says_why_it_waits_and_that_nothing_is_charged() -> None:
    from generation.jobs import EventKind, JobEvent
    from storage.jobs import JobRecord

    job = JobRecord(job_id="j1", guild_id=1, channel_id=2, user_id=42)
    text = messages.progress_text(job, JobEvent("j1", EventKind.STALLED))
    assert "<@42>" in text and "no GPU worker" in text and "nothing is lost" in text
    back = messages.progress_text(job, JobEvent("j1", EventKind.STALLED, reason="resuming"))
    assert "<@42>" in back and "worker is back" in back
    status = QuotaStatus(
        limit=5, used=1, remaining=4, period="day", next_available_at=None, source="guild"
    )
    held = messages.accepted_text(3, 90.0, status, on_hold=True)
    assert "no GPU worker is connected" in held and "about" not in held  # no false estimate
    assert "4 of 5" in held
    assert "about 2 min" in messages.accepted_text(3, 90.0, status)


def test_a_clip_remade_under_a_leaner_plan_is_not_said_to_have_switched_models() -> None:
    from generation.jobs import EventKind, JobEvent
    from storage.jobs import JobRecord

    job = JobRecord(job_id="j1", guild_id=1, channel_id=2, user_id=42, options={"seed": 5})
    stepped = messages.done_text(
        job, JobEvent("j1", EventKind.DONE, seed=5, fallback_from="fast", load_seconds=41.6)
    )
    assert "ran short of memory" in stepped and "reloading the model for it took 42 s" in stepped
    assert "Loading the model" not in stepped and "Switching" not in stepped
    other = messages.done_text(job, JobEvent("j1", EventKind.DONE, seed=5, load_seconds=20.0))
    assert "Loading the model for this clip took 20 s" in other
    plain = messages.done_text(job, JobEvent("j1", EventKind.DONE, seed=5))
    assert "ℹ️" not in plain


def test_a_draft_says_so_with_its_settings() -> None:
    from generation.jobs import EventKind, JobEvent
    from generation.options import AnimateOptions
    from storage.jobs import JobRecord

    options = AnimateOptions(cache_interval=3, seed=5).to_dict()
    job = JobRecord(job_id="j1", guild_id=1, channel_id=2, user_id=42, options=options)
    assert "quality `draft`" in messages.done_text(job, JobEvent("j1", EventKind.DONE, seed=5))
    best = JobRecord(job_id="j2", guild_id=1, channel_id=2, user_id=42, options={"seed": 5})
    assert "draft" not in messages.done_text(best, JobEvent("j2", EventKind.DONE, seed=5))


def test_the_moderators_log_reads_as_sentences_and_fits_one_message() -> None:
    assert "No moderator has changed" in messages.audit_text([])
    at = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    steps = AuditEntry(
        id=1,
        guild_id=1,
        actor_id=7,
        action="settings.update",
        target="guild",
        old={"max_steps": 30, "default_format": "mp4"},
        new={"max_steps": 20, "default_format": "mp4"},
        created_at=at,
    )
    text = messages.audit_text([steps])
    assert text.splitlines()[1] == f"<t:{int(at.timestamp())}:R> <@7> changed max steps 30 → **20**"
    reset = replace(steps, action="quota.user.reset", target="user:9", old={"used": 3}, new={})
    many = messages.audit_text([reset] * 100)
    assert len(many) <= 2000 and "reset <@9>'s usage (3 clips used → 0)" in many
    # The cut is said, with how many did not fit.
    shown = many.count("reset <@9>")
    assert many.splitlines()[-1] == f"…and {100 - shown} older, too long to show here."
    assert "older" not in messages.audit_text([reset] * 3)


def test_a_failure_always_says_the_member_was_not_charged_once() -> None:
    job = JobRecord(job_id="a" * 32, guild_id=1, channel_id=2, user_id=3)
    oom = messages.failed_text(job, "The GPU ran out of memory. Please try again later.")
    assert oom.endswith("You were not charged.")
    said = messages.failed_text(job, "Discord refused it. You were not charged; try again.")
    assert said.count("not charged") == 1
    assert messages.duration(59.6) == "about 1 min"  # not "about 60 s"


def test_defaults_text_says_what_a_clip_gets_and_which_are_the_members_own() -> None:
    from generation.options import AnimateOptions
    from storage.member_defaults import MemberDefaults

    none = messages.defaults_text(AnimateOptions(), MemberDefaults(1), saved=False)
    assert "motion `127` · format `mp4` · fps `7` · quality `best` · steps `25`" in none
    assert "(yours)" not in none and "Saved" not in none and "`/defaults format:gif" in none
    mine = MemberDefaults(1, preset="dramatic", format="gif")
    options = AnimateOptions.from_preset("dramatic", format="gif", num_inference_steps=10)
    text = messages.defaults_text(options, mine, saved=True)
    assert text.startswith("✅ Saved.")
    assert "motion `190` (preset `dramatic`) (yours) · format `gif` (yours) · fps `7` ·" in text
    assert "steps `10`" in text and "every server" in text and "reset:True" in text
    bounce = messages.defaults_text(
        AnimateOptions(ping_pong=True, interpolate=True),
        MemberDefaults(1, ping_pong=True),
        saved=True,
    )
    assert "steps `25` · `bounce` (yours) · `smooth`." in bounce
    whole = messages.defaults_text(
        AnimateOptions(fit="whole"), MemberDefaults(1, fit="whole"), saved=False
    )
    assert "steps `25` · fit `whole` (yours)." in whole


def test_a_clips_alt_text_says_what_it_is_in_plain_words() -> None:
    job = JobRecord(
        job_id="a" * 32,
        guild_id=1,
        channel_id=2,
        user_id=3,
        options={"motion_bucket_id": 190, "cache_interval": 3, "seed": 42},
        seed=42,
    )
    text = messages.clip_alt_text(job)
    assert text == (
        "Video: a draft clip animated from a still picture by Stable Video Diffusion, "
        "motion 190 of 255, seed 42."
    )
    assert len(text) <= 1024 and "`" not in text
    # It runs on every delivery: a record with odd or missing options still gets one.
    bare = replace(job, options={}, seed=None)
    assert messages.clip_alt_text(bare).endswith("motion 127 of 255.")


def test_usage_text_tells_moderators_how_clips_ended_and_who_made_most() -> None:
    from storage.usage import GuildUsage

    since = datetime(2026, 11, 24, tzinfo=UTC)
    usage = GuildUsage(
        since=since,
        posted=12,
        failed=1,
        pending=2,
        members=3,
        top=((41, 8), (42, 3), (43, 1)),
        wait_seconds=95,
        make_seconds=38,
    )
    assert messages.usage_text(usage, 7) == (
        "📊 In the last 7 days: **12** clips posted for 3 members; 1 failed (refunded); "
        "2 waiting, being made or being posted.\n"
        "Typical wait 2 min, making 38 s (medians).\n"
        "Most clips: <@41> 8 · <@42> 3 · <@43> 1"
    )
    one = GuildUsage(since=since, posted=1, members=1, top=((41, 1),))
    assert messages.usage_text(one, 1).startswith(
        "📊 In the last 24 hours: **1** clip posted for 1 member."
    )
    nothing = messages.usage_text(GuildUsage(since=since), 30)
    assert nothing == "📊 No clips were asked for here in the last 30 days."
    # A host that keeps records for less than the span asked says so.
    short = messages.usage_text(GuildUsage(since=since), 30, kept_days=14)
    assert "the last 30 days (the bot keeps 14 days of records)" in short


def test_the_moderators_queue_lists_this_servers_clips_in_the_order_they_are_made() -> None:
    from generation.jobs import QueueSnapshot, RunningJob, WaitingJob
    from storage.jobs import JobState

    def job(n: int, user: int, state: JobState = JobState.QUEUED) -> JobRecord:
        return JobRecord(
            job_id=f"{n:032x}",
            guild_id=1,
            channel_id=2,
            user_id=user,
            state=state,
            progress_message_id=100 + n,
        )

    running = (RunningJob(f"{1:032x}", 41, 1, "generating", 12, 25, 30.0),)
    waiting = (
        WaitingJob("f" * 32, 99, 2, 1, 40.0, 625),  # another server's
        WaitingJob(f"{3:032x}", 42, 1, 2, 80.0, 625),
        WaitingJob(f"{2:032x}", 41, 1, 3, 120.0, 625),
    )
    snapshot = QueueSnapshot("ready", waiting, running)
    jobs = [job(2, 41), job(3, 42), job(1, 41, JobState.RUNNING), job(4, 43, JobState.DONE)]
    text = messages.guild_queue_text(jobs, snapshot)
    lines = text.splitlines()
    assert (
        lines[0]
        == "📋 4 clips of this server's in the line (3 waiting in all, every server counted)."
    )
    assert lines[1].startswith("• <@41>: [`00000000`](https://discord.com/channels/1/2/101)")
    assert "being made now (step 12/25)" in lines[1]
    assert lines[2].startswith("• <@42>:") and "position 2, starting in about 1 min" in lines[2]
    assert lines[3].startswith("• <@41>:") and "position 3" in lines[3]
    assert lines[4].startswith("• <@43>:") and "posting it now" in lines[4]
    assert "Cancel button" in lines[-1]
    many = [job(n, 50 + n) for n in range(10, 40)]
    long = messages.guild_queue_text(many, QueueSnapshot("ready", (), ()))
    assert "…and 15 more." in long and len(long) <= messages.MAX_CONTENT
    empty = messages.guild_queue_text([], snapshot)
    assert "Nothing of this server's is waiting" in empty
    # With Discord's real ids (19 digits) a line is about 170 characters: fifteen do not fit
    # in one message, and the list is cut by whole lines, its end still said.
    big = 1_577_707_244_630_310_943

    def real(n: int) -> JobRecord:
        return JobRecord(
            job_id=f"{n:032x}",
            guild_id=big,
            channel_id=big + 1,
            user_id=big + 100 + n,
            progress_message_id=big + 1000 + n,
        )

    waits = tuple(
        WaitingJob(f"{n:032x}", big + 100 + n, big, n, 3600.0 * n, 625) for n in range(1, 21)
    )
    crowded = messages.guild_queue_text(
        [real(n) for n in range(1, 21)], QueueSnapshot("ready", waits, ())
    )
    assert len(crowded) <= messages.MAX_CONTENT
    listed = [line for line in crowded.splitlines() if line.startswith("• ")]
    assert all("starting in about" in line for line in listed)  # none cut short
    assert f"…and {20 - len(listed)} more." in crowded and 5 < len(listed) < 15
    assert crowded.splitlines()[-1].startswith("Each clip's progress message")
    # What fits exactly is shown whole, with no "…and N more" for a line that was not cut.
    fitted = messages._as_many_as_fit(["h" * 10], ["x" * 1989], lambda n: f"…and {n} more.")
    assert len(fitted) == messages.MAX_CONTENT and "more" not in fitted


def test_history_links_each_posted_clip_and_says_how_the_others_ended() -> None:
    from storage.jobs import JobState

    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def job(state: JobState, **fields: object) -> JobRecord:
        return JobRecord(
            job_id="a" * 32,
            guild_id=1,
            channel_id=2,
            user_id=3,
            state=state,
            created_at=at,
            options={"motion_bucket_id": 90},
            seed=7,
            **fields,  # type: ignore[arg-type]
        )

    url = "https://discord.com/channels/@me/5/6"  # sent by DM
    text = messages.history_text(
        [
            job(JobState.DELIVERED, clip_url=url),
            job(JobState.DELIVERED),
            job(JobState.FAILED, error="The GPU ran out of memory."),
            job(JobState.CANCELLED),
            job(JobState.QUEUED),
        ]
    )
    lines = text.splitlines()
    stamp = f"<t:{int(at.timestamp())}:R>"
    assert lines[1] == f"• {stamp} [posted]({url}) · motion `90` · seed `7`"
    assert "posted (deleted since" in lines[2]
    assert "failed, not charged: The GPU ran out of memory." in lines[3]
    assert "cancelled, not charged" in lines[4] and "in the line" in lines[5]
    assert "made no clips here yet" in messages.history_text([])


def test_help_says_how_to_make_a_clip_and_where_the_member_stands() -> None:
    from bot.service import Overview
    from generation.images import ImageLimits
    from generation.jobs import QueueSnapshot, WaitingJob
    from generation.options import AnimateOptions
    from storage.member_defaults import MemberDefaults

    status = QuotaStatus(
        limit=5, used=2, remaining=3, period="day", next_available_at=None, source="guild"
    )
    waiting = tuple(WaitingJob(str(n), n, 1, n, 60.0 * n, 1) for n in (1, 2))
    overview = Overview(
        quota=status,
        options=AnimateOptions(format="gif"),
        defaults=MemberDefaults(1, format="gif"),
        max_steps=30,
        snapshot=QueueSnapshot("ready", waiting, ()),
        image_limits=ImageLimits(max_bytes=10 * 2**20, max_pixels=20_000_000),
        image_formats=("PNG", "JPEG", "WEBP", "GIF", "HEIF"),
        is_moderator=False,
    )
    text = messages.help_text(overview)
    # The host's limits, the member's quota and defaults, the line as it stands.
    assert "(PNG, JPEG, WebP, GIF or HEIC, up to 10 MiB and 20 megapixels)" in text
    assert "**3** of 5 clips left" in text
    assert "format `gif` (yours)" in text and "at most `30` steps here" in text
    assert "2 clips waiting. The last in line starts in about 2 min." in text
    assert "loading" not in text and "/quota-admin" not in text and len(text) <= 2000
    # While the model loads, and for a moderator.
    loading = replace(overview, snapshot=QueueSnapshot("loading", (), ()), is_moderator=True)
    text = messages.help_text(loading)
    assert "0 clips waiting." in text and "still loading the model" in text
    # No start time while nothing is being made: the line says why clips wait.
    held = messages.help_text(replace(overview, snapshot=QueueSnapshot("no_workers", waiting, ())))
    assert "starts in" not in held and "No GPU worker is connected" in held
    assert "🛡️ **Moderators**: `/quota-admin`" in text
    assert "disk" not in text
    full = messages.help_text(replace(overview, disk_full=True))
    assert "New clips are paused: the bot's server is out of disk space" in full


def test_the_status_line_says_how_busy_the_bot_is() -> None:
    from generation.jobs import QueueSnapshot, RunningJob, WaitingJob

    waiting = tuple(WaitingJob(str(n), n, 1, n, 60.0 * n, 1) for n in (1, 2, 3))
    assert "Ready" in messages.presence_text(QueueSnapshot("ready", (), ()))
    assert messages.presence_text(QueueSnapshot("ready", waiting, ())).startswith(
        "🎬 3 clips in line"
    )
    assert "Loading the model" in messages.presence_text(QueueSnapshot("loading", waiting, ()))
    assert "No GPU worker" in messages.presence_text(QueueSnapshot("no_workers", (), ()))
    one = messages.presence_text(QueueSnapshot("ready", waiting[:1], ()))
    assert one.startswith("🎬 1 clip in line") and len(one) <= 128
    making = (RunningJob("r", 9, 1, "generating", 3, 25, 4.0),)
    assert "Making a clip" in messages.presence_text(QueueSnapshot("ready", (), making))
    two = (*making, RunningJob("s", 8, 1, "generating", 1, 25, 1.0))  # two GPU workers
    assert "Making 2 clips" in messages.presence_text(QueueSnapshot("ready", (), two))
    full = messages.presence_text(QueueSnapshot("ready", waiting, ()), disk_full=True)
    assert full.startswith("⚠️ Paused: the server's disk is full") and len(full) <= 128


def test_clips_not_handed_over_are_named_and_counted() -> None:
    one = JobRecord(job_id="a" * 32, guild_id=1, channel_id=2, user_id=3)
    two = JobRecord(job_id="b" * 32, guild_id=1, channel_id=2, user_id=3)
    assert "It is kept" in messages.not_handed_over_text([one])
    both = messages.not_handed_over_text([one, two])
    assert "`aaaaaaaa`, `bbbbbbbb`" in both and "They are kept" in both
    assert "Discord" not in both  # the disk may have been the cause

"""JobStore on a database file: the record of every job and what it went through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from storage.database import Database
from storage.errors import IllegalTransition, JobExists, JobNotFound
from storage.jobs import TRANSITIONS, JobRecord, JobState, JobStore

GUILD, CHANNEL, USER = 1, 2, 3


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with await Database.open(tmp_path / "bot.sqlite3") as database:
        yield database


@pytest.fixture
def jobs(db: Database, clock: FakeClock) -> JobStore:
    return JobStore(db, clock=clock)


def new_job(user_id: int = USER, **fields: Any) -> JobRecord:
    return JobRecord(
        job_id=uuid4().hex, guild_id=GUILD, channel_id=CHANNEL, user_id=user_id, **fields
    )


async def test_a_job_round_trips_every_field(jobs: JobStore, clock: FakeClock) -> None:
    record = new_job(
        application_id=10,
        interaction_id=11,
        interaction_token="tok",
        reply_to_message_id=12,
        options={"motion_bucket_id": 127, "fps": 7, "format": "gif", "seed": None},
        model="stabilityai/stable-video-diffusion-img2vid-xt",
        seed=2**32 - 1,
        input_path="/data/inputs/x.png",
        max_bytes=10 * 2**20,
        cost_units=25 * 25,
    )
    created = await jobs.create(record)
    assert created.created_at == clock.now and created.state is JobState.QUEUED
    assert await jobs.get(record.job_id) == created
    assert await jobs.get("missing") is None
    with pytest.raises(JobExists):
        await jobs.create(record)


async def test_the_happy_path_records_times_and_every_state(
    jobs: JobStore, clock: FakeClock
) -> None:
    job = await jobs.create(new_job(cost_units=100))
    clock.advance(5)
    assert await jobs.increment_attempts(job.job_id) == 1
    running = await jobs.set_state(job.job_id, JobState.RUNNING)
    assert running.started_at == clock.now and running.attempts == 1
    clock.advance(30)
    await jobs.set_state(job.job_id, JobState.ENCODING)
    clock.advance(2)
    done = await jobs.set_state(job.job_id, JobState.DONE, output_path="/out/x.mp4", seed=42)
    assert (done.duration_seconds, done.output_path, done.seed) == (32.0, "/out/x.mp4", 42)
    clock.advance(1)
    delivered = await jobs.set_state(job.job_id, JobState.DELIVERED)
    assert delivered.finished_at == clock.now
    assert await jobs.get(job.job_id) == delivered
    assert [state for state, _ in await jobs.events(job.job_id)] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.ENCODING,
        JobState.DONE,
        JobState.DELIVERED,
    ]


async def test_illegal_transitions_are_refused_and_change_nothing(jobs: JobStore) -> None:
    job = await jobs.create(new_job())
    with pytest.raises(IllegalTransition) as caught:
        await jobs.set_state(job.job_id, JobState.DELIVERED, output_path="/x")
    assert (caught.value.current, caught.value.requested) == ("queued", "delivered")
    assert await jobs.get(job.job_id) == job
    await jobs.set_state(job.job_id, JobState.CANCELLED)
    for state in JobState:
        with pytest.raises(IllegalTransition):
            await jobs.set_state(job.job_id, state)
    with pytest.raises(JobNotFound):
        await jobs.set_state("missing", JobState.RUNNING)


def test_finished_states_are_final_and_every_other_state_can_end() -> None:
    for state, targets in TRANSITIONS.items():
        if state.finished:
            assert not targets
        else:
            assert JobState.FAILED in targets


async def test_explicit_duration_wins_and_unknown_fields_are_refused(
    jobs: JobStore, clock: FakeClock
) -> None:
    job = await jobs.create(new_job())
    await jobs.set_state(job.job_id, JobState.RUNNING)
    done = await jobs.set_state(job.job_id, JobState.DONE, duration_seconds=12.5)
    assert done.duration_seconds == 12.5
    # A worker that does not know the duration passes None: the store's own timing stands in.
    other = await jobs.create(new_job())
    await jobs.set_state(other.job_id, JobState.RUNNING)
    clock.advance(7)
    timed = await jobs.set_state(other.job_id, JobState.DONE, duration_seconds=None)
    assert timed.duration_seconds == 7.0
    with pytest.raises(TypeError, match="state"):
        await jobs.update(job.job_id, state="queued")
    with pytest.raises(TypeError, match="attempts"):
        await jobs.set_state(job.job_id, JobState.DELIVERED, attempts=0)


async def test_update_changes_fields_without_a_state_change(jobs: JobStore) -> None:
    job = await jobs.create(new_job())
    updated = await jobs.update(job.job_id, progress_message_id=555, options={"fps": 8})
    assert (updated.progress_message_id, updated.options, updated.state) == (
        555,
        {"fps": 8},
        JobState.QUEUED,
    )
    assert await jobs.get(job.job_id) == updated
    assert [s for s, _ in await jobs.events(job.job_id)] == [JobState.QUEUED]


async def test_requeue_after_a_crash_and_after_a_shutdown(jobs: JobStore) -> None:
    job = await jobs.create(new_job())
    await jobs.increment_attempts(job.job_id)
    await jobs.set_state(job.job_id, JobState.RUNNING)
    crashed = await jobs.requeue(job.job_id)
    assert (crashed.state, crashed.attempts) == (JobState.QUEUED, 1)
    await jobs.increment_attempts(job.job_id)
    await jobs.set_state(job.job_id, JobState.RUNNING)
    shut_down = await jobs.requeue(job.job_id, refund_attempt=True)
    assert (shut_down.state, shut_down.attempts) == (JobState.QUEUED, 1)
    # A job interrupted while still waiting is simply still waiting.
    assert await jobs.requeue(job.job_id, refund_attempt=True) == shut_down
    assert [s for s, _ in await jobs.events(job.job_id)].count(JobState.QUEUED) == 3
    await jobs.set_state(job.job_id, JobState.CANCELLED)
    with pytest.raises(IllegalTransition):
        await jobs.requeue(job.job_id)


async def test_recovery_query_finds_unfinished_jobs_oldest_first(
    jobs: JobStore, clock: FakeClock
) -> None:
    made = []
    for _ in range(6):
        made.append(await jobs.create(new_job()))
        clock.advance(1)
    queued, running, encoding, done, delivered, failed = (j.job_id for j in made)
    await jobs.set_state(running, JobState.RUNNING)
    for job_id in (encoding, done, delivered):
        await jobs.set_state(job_id, JobState.RUNNING)
        await jobs.set_state(job_id, JobState.ENCODING)
    await jobs.set_state(done, JobState.DONE)
    await jobs.set_state(delivered, JobState.DONE)
    await jobs.set_state(delivered, JobState.DELIVERED)
    await jobs.set_state(failed, JobState.FAILED, error="The GPU ran out of memory.")

    unfinished = await jobs.unfinished()
    assert [j.job_id for j in unfinished] == [queued, running, encoding, done]
    assert [j.state for j in unfinished] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.ENCODING,
        JobState.DONE,
    ]
    assert (await jobs.get(failed)).error == "The GPU ran out of memory."  # type: ignore[union-attr]


async def test_active_jobs_and_history_are_per_member(jobs: JobStore, clock: FakeClock) -> None:
    mine = [await jobs.create(new_job()) for _ in range(3)]
    clock.advance(1)
    theirs = await jobs.create(new_job(user_id=USER + 1))
    await jobs.set_state(mine[0].job_id, JobState.CANCELLED)
    active = await jobs.active_for_user(GUILD, USER)
    assert [j.job_id for j in active] == [mine[1].job_id, mine[2].job_id]
    assert await jobs.active_for_user(GUILD + 1, USER) == []
    history = await jobs.history(GUILD, USER, limit=2)
    assert [j.job_id for j in history] == [mine[2].job_id, mine[1].job_id]
    assert [j.job_id for j in await jobs.history(GUILD, USER + 1)] == [theirs.job_id]


async def test_recent_durations_are_the_latest_generated_clips_oldest_first(
    jobs: JobStore, clock: FakeClock
) -> None:
    for seconds, cost in ((10.0, 100), (20.0, 200), (30.0, 300)):
        job = await jobs.create(new_job(cost_units=cost))
        await jobs.set_state(job.job_id, JobState.RUNNING)
        clock.advance(seconds)
        await jobs.set_state(job.job_id, JobState.DONE)
    # A job that never ran teaches nothing.
    await jobs.create(new_job(cost_units=50))
    assert await jobs.recent_durations() == [(100, 10.0), (200, 20.0), (300, 30.0)]
    assert await jobs.recent_durations(limit=2) == [(200, 20.0), (300, 30.0)]


async def test_finished_jobs_with_files_for_clean_up(jobs: JobStore, clock: FakeClock) -> None:
    old = await jobs.create(new_job(input_path="/in/old.png"))
    await jobs.set_state(old.job_id, JobState.FAILED)
    waiting = await jobs.create(new_job(input_path="/in/wait.png"))
    clock.advance(3600)
    recent = await jobs.create(new_job(input_path="/in/new.png"))
    await jobs.set_state(recent.job_id, JobState.CANCELLED)
    cutoff = clock.now - timedelta(minutes=30)
    assert [j.job_id for j in await jobs.finished_with_files(cutoff)] == [old.job_id]
    await jobs.update(old.job_id, input_path=None)
    assert await jobs.finished_with_files(cutoff) == []
    assert (await jobs.get(waiting.job_id)).input_path == "/in/wait.png"  # type: ignore[union-attr]


async def test_old_finished_jobs_are_forgotten_once_their_files_are_gone(
    jobs: JobStore, clock: FakeClock
) -> None:
    done = await jobs.create(new_job())
    await jobs.set_state(done.job_id, JobState.RUNNING)
    await jobs.set_state(done.job_id, JobState.FAILED)
    kept_files = await jobs.create(new_job(input_path="/in/a.png"))
    await jobs.set_state(kept_files.job_id, JobState.CANCELLED)
    waiting = await jobs.create(new_job())  # however old: never forgotten unfinished
    clock.advance(3600)
    recent = await jobs.create(new_job())
    await jobs.set_state(recent.job_id, JobState.CANCELLED)
    cutoff = clock.now - timedelta(minutes=30)
    assert await jobs.forget_finished(cutoff) == 1
    assert await jobs.get(done.job_id) is None and await jobs.events(done.job_id) == []
    for job in (kept_files, waiting, recent):
        assert await jobs.get(job.job_id) is not None
    assert await jobs.forget_finished(cutoff) == 0
    # In batches of `limit`.
    for _ in range(3):
        await jobs.set_state((await jobs.create(new_job())).job_id, JobState.CANCELLED)
    clock.advance(3600)
    assert await jobs.forget_finished(clock.now, limit=2) == 2
    assert await jobs.forget_finished(clock.now, limit=2) == 2  # the third and `recent`


async def test_the_clean_up_reads_only_the_jobs_that_still_have_files(db: Database) -> None:
    # The hourly clean-up holds the database while it reads: with every job ever made in the
    # table, a full scan there kept /quota and the other commands waiting.
    seen: list[str] = []
    original = db.fetch

    async def explained(sql: str, params: Any = ()) -> Any:
        plan = await original(f"EXPLAIN QUERY PLAN {sql}", params)
        seen.append(" ".join(str(row[-1]) for row in plan))
        return await original(sql, params)

    db.fetch = explained  # type: ignore[method-assign]
    await JobStore(db).finished_with_files(datetime.now(UTC))
    assert seen and "USING INDEX jobs_with_files" in seen[0], seen
    assert "SCAN" not in seen[0]


def test_a_jobs_interaction_token_never_shows_in_its_repr() -> None:
    # A record logged whole (an f-string, a traceback's locals) would hand out a token that
    # lets anyone post as the bot in that channel.
    job = JobRecord(job_id="a" * 32, guild_id=1, channel_id=2, user_id=3, interaction_token="s3")
    assert "s3" not in repr(job) and job.interaction_token == "s3"


async def _made(
    jobs: JobStore, clock: FakeClock, user_id: int, *, wait: float, make: float
) -> None:
    job = await jobs.create(new_job(user_id))
    clock.advance(wait)
    await jobs.set_state(job.job_id, JobState.RUNNING)
    clock.advance(make)
    for state in (JobState.ENCODING, JobState.DONE, JobState.DELIVERED):
        await jobs.set_state(job.job_id, state)


async def test_usage_counts_a_servers_clips_by_outcome_and_member(
    jobs: JobStore, clock: FakeClock
) -> None:
    # Before the span: not counted.
    await _made(jobs, clock, 9, wait=1, make=1)
    clock.advance(8 * 86400)
    since = clock.now
    for user_id, wait, make in ((4, 10, 30), (4, 20, 40), (4, 30, 50), (5, 0, 20), (6, 60, 60)):
        await _made(jobs, clock, user_id, wait=wait, make=make)
    # Retried after a crash: it waited once, before its first start; its making is its last run.
    retried = await jobs.create(new_job(8))
    clock.advance(10)
    await jobs.set_state(retried.job_id, JobState.RUNNING)
    clock.advance(100)
    await jobs.requeue(retried.job_id)
    clock.advance(500)
    await jobs.set_state(retried.job_id, JobState.RUNNING)
    clock.advance(40)
    for state in (JobState.ENCODING, JobState.DONE, JobState.DELIVERED):
        await jobs.set_state(retried.job_id, state)
    failed = await jobs.create(new_job(5))
    await jobs.set_state(failed.job_id, JobState.FAILED, error="out of memory")
    cancelled = await jobs.create(new_job(6))
    await jobs.set_state(cancelled.job_id, JobState.CANCELLED)
    await jobs.create(new_job(7))  # still waiting
    # Another server's: not counted.
    other = await jobs.create(replace(new_job(4), guild_id=GUILD + 1))
    await jobs.set_state(other.job_id, JobState.CANCELLED)

    usage = await jobs.usage(GUILD, since, top=2)
    assert (usage.posted, usage.failed, usage.cancelled, usage.pending) == (6, 1, 1, 1)
    assert usage.asked == 9 and usage.members == 4
    assert usage.top == ((4, 3), (5, 1))  # ties: who asked first
    assert usage.wait_seconds == 15 and usage.make_seconds == 40
    empty = await jobs.usage(GUILD, clock.now + timedelta(seconds=1))
    assert empty.asked == 0 and empty.wait_seconds is None and empty.top == ()

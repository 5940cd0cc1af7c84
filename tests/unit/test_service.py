"""The service layer without Discord: a real queue on the fake engine, a real SQLite database in a
temporary file, and a presenter that records what members would be shown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from bot import service as service_module
from bot.service import AnimateService, Member, Origin, RedeliveryPolicy, ServiceConfig
from generation.errors import (
    DiskFull,
    GenerationError,
    GenerationFailed,
    GPUUnusable,
    InvalidImage,
    InvalidOptions,
    QueueFull,
    TooManyJobs,
)
from generation.fake_engine import FakeEncoder, FakeEngine
from generation.jobs import EventKind, JobEvent
from generation.metrics import Metrics
from generation.options import AnimateOptions
from generation.queue import QueueClosed
from generation.worker import LocalJobQueue
from storage.database import Database
from storage.errors import QuotaExceeded
from storage.jobs import JobRecord, JobState, JobStore
from storage.member_defaults import MemberDefaultsStore
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

ALICE = Member(guild_id=1, user_id=10)
ORIGIN = Origin(channel_id=5, max_bytes=10 * 2**20)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 180), (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Recorder:
    """A presenter that remembers what it was asked to show."""

    delivered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    interruptions: list[str] = field(default_factory=list)
    refuse_uploads: bool = False
    # Posted, then what comes after (ending the progress message) raises.
    tidying_fails: bool = False
    # One entry per delivery attempt: whether the member was to be told of a refusal.
    attempts: list[bool] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def show(self, job: JobRecord, event: JobEvent) -> None:
        pass

    async def deliver(
        self,
        job: JobRecord,
        event: JobEvent,
        *,
        tell: bool = True,
        again: bool = False,
        posted: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        self.attempts.append(tell)
        self.changed.set()
        if self.refuse_uploads:
            return False
        self.delivered.append(job.job_id)
        if posted is not None:
            await posted()
        self.changed.set()
        if self.tidying_fails:
            raise RuntimeError("the progress message could not be tidied away")
        return True

    async def failed(self, job: JobRecord, message: str) -> None:
        self.failures.append(message)
        self.changed.set()

    async def cancelled(self, job: JobRecord) -> None:
        self.cancels.append(job.job_id)
        self.changed.set()

    async def interrupted(self, job: JobRecord, event: JobEvent) -> None:
        self.interruptions.append(job.job_id)

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.delivered) + len(self.failures) + len(self.cancels) < count:
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Rig:
    service: AnimateService
    queue: LocalJobQueue
    jobs: JobStore
    quotas: QuotaStore
    engine: FakeEngine
    presenter: Recorder


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    engine: FakeEngine | None = None,
    encoder: FakeEncoder | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    redelivery: RedeliveryPolicy | None = None,
    metrics: Metrics | None = None,
    free_bytes: Callable[[Path], int | None] = lambda _folder: 2**40,
    disk_dirs: tuple[Path, ...] = (),
) -> AsyncIterator[Rig]:
    engine = engine or FakeEngine(frames=4, step_seconds=0.001)
    async with await Database.open(tmp_path / "bot.sqlite3") as db:
        guilds = GuildSettingsStore(db, default_limit=3, default_period="day")
        quotas = QuotaStore(db, settings=guilds)
        jobs = JobStore(db)
        box: list[AnimateService] = []

        async def journal(event: JobEvent) -> None:
            await box[0].journal(event)

        queue = LocalJobQueue(engine, output_dir=tmp_path / "out", journal=journal, encoder=encoder)
        service = AnimateService(
            config=ServiceConfig(
                inputs_dir=tmp_path / "in",
                models=["m"],
                resolution=256,
                redelivery=redelivery or RedeliveryPolicy(),
                disk_dirs=disk_dirs,
            ),
            jobs=jobs,
            quotas=quotas,
            guilds=guilds,
            defaults=MemberDefaultsStore(db),
            queue=queue,
            frames_for=engine.frames_for,
            clock=clock,
            metrics=metrics,
            free_bytes=free_bytes,
        )
        box.append(service)
        presenter = Recorder()
        await queue.start()
        pump = asyncio.create_task(service.pump(presenter))
        try:
            yield Rig(service, queue, jobs, quotas, engine, presenter)
        finally:
            await queue.stop(1)
            await service.close()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def _wait_for_state(jobs: JobStore, job_id: str, state: JobState) -> JobRecord:
    async with asyncio.timeout(10):
        while True:
            job = await jobs.get(job_id)
            if job is not None and job.state is state:
                return job
            await asyncio.sleep(0.01)


async def test_a_delivered_clip_is_charged_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        assert accepted.quota.remaining == 2
        assert accepted.job.seed is not None  # fixed at submit, so a retry reproduces it
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        assert r.presenter.delivered == [accepted.job.job_id]
        assert (await r.service.quota(ALICE)).remaining == 2


def _locked(
    monkeypatch: pytest.MonkeyPatch, jobs: JobStore, state: JobState, *, times: int | None
) -> list[str]:
    """Writes of `state` fail as a database locked past its timeout, the first `times` (None:
    every one); returns the ids of the jobs whose write failed, one per failure."""
    set_state = jobs.set_state
    lost: list[str] = []

    async def locked(job_id: str, to: JobState, **changes: Any) -> JobRecord:
        if to is state and (times is None or len(lost) < times):
            lost.append(job_id)
            raise sqlite3.OperationalError("database is locked")
        return await set_state(job_id, to, **changes)

    monkeypatch.setattr(jobs, "set_state", locked)
    return lost


@pytest.mark.parametrize(
    "lost_writes",
    [
        # The database was locked past its timeout as the clip started: the row stayed
        # "queued", and "done" cannot follow "queued": the clip was never posted, nor could it
        # be cancelled.
        1,
        # Its start, its encoding and its end each failed to record at their first write (the
        # database locked, or full): the row still says "queued" when the clip is done.
        3,
    ],
    ids=["its start", "all its progress"],
)
async def test_a_clip_whose_start_could_not_be_recorded_is_still_posted_and_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost_writes: int
) -> None:
    async with rig(tmp_path) as r:
        lost = _locked(monkeypatch, r.jobs, JobState.RUNNING, times=lost_writes)
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        assert lost == [accepted.job.job_id] * lost_writes
        assert r.presenter.delivered == [accepted.job.job_id]
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_clip_asked_for_while_the_model_loads_says_it_may_start_later(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(frames=4, step_seconds=0.001, load_seconds=1.0)
    async with rig(tmp_path, engine) as r:
        early = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert any("still loading the model" in note for note in early.notes)
        await _wait_for_state(r.jobs, early.job.job_id, JobState.DELIVERED)
        later = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert not any("loading" in note for note in later.notes)


async def test_while_the_gpu_worker_is_down_a_clip_is_refused_or_told_why_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "It should start in about 1 s" would be false: a worker stopped by an error makes nothing
    # until the bot is restarted (refused, nothing charged); one restarting for a stuck GPU
    # makes the clip after the restart (queued, and told so).
    async with rig(tmp_path) as r:
        await asyncio.wait_for(r.queue.ready.wait(), 10)
        monkeypatch.setattr(r.queue, "_state", "failed")
        with pytest.raises(GenerationError) as refused:
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert "restart" in refused.value.user_message
        assert "not charged" in refused.value.user_message
        assert (await r.service.quota(ALICE)).remaining == 3
        monkeypatch.setattr(r.queue, "_state", "stuck")
        kept = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert any("after the restart" in note for note in kept.notes)


async def test_bad_image_is_refused_before_anything_is_charged(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        with pytest.raises(InvalidImage):
            await r.service.submit(ALICE, b"%PDF-1.7 not a picture", AnimateOptions(), ORIGIN)
        assert (await r.service.quota(ALICE)).remaining == 3
        assert await r.jobs.active_for_user(1, 10) == []


async def test_a_full_disk_refuses_new_clips_and_re_rolls_before_anything_is_charged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 10 * 2**30}
    asked: list[Path] = []

    def free_bytes(folder: Path) -> int:
        asked.append(folder)
        return free["bytes"]

    async with rig(tmp_path, free_bytes=free_bytes) as r:
        made = await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN)
        await _wait_for_state(r.jobs, made.job.job_id, JobState.DELIVERED)
        assert asked and asked[0] == tmp_path / "in"  # where the pictures go
        assert not (await r.service.overview(ALICE)).disk_full
        free["bytes"] = 100 * 2**20  # under the 256 MiB kept free for the clips in line
        assert (await r.service.overview(ALICE)).disk_full  # /help and the status say so
        with pytest.raises(DiskFull) as refused:
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert "out of disk space" in refused.value.user_message
        assert "not charged" in refused.value.user_message
        assert "100 MiB free" in refused.value.detail  # for the host's log
        with pytest.raises(DiskFull):
            await r.service.vary(ALICE, made.job.job_id, "reroll", ORIGIN)
        assert (await r.service.quota(ALICE)).remaining == 2  # the one clip posted, no more
        assert await r.jobs.active_for_user(1, 10) == []
        assert [p.name for p in (tmp_path / "in").iterdir()] == [f"{made.job.job_id}.png"]
        # The host is told once, not at each refusal or each look at the status line.
        told = [r for r in caplog.records if "new clips are refused" in r.getMessage()]
        assert len(told) == 1 and told[0].levelname == "ERROR"
        assert "100 MiB free" in told[0].getMessage()
        free["bytes"] = 300 * 2**20  # space freed: clips are taken again
        again = await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN)
        await _wait_for_state(r.jobs, again.job.job_id, JobState.DELIVERED)


async def test_the_fullest_of_the_disks_in_use_decides(tmp_path: Path) -> None:
    # The database on a disk of its own that is full, the pictures' disk with room.
    database = tmp_path / "db"
    room = {tmp_path / "in": 10 * 2**30, database: 10 * 2**20}
    async with rig(tmp_path, free_bytes=room.get, disk_dirs=(database,)) as r:
        detail = await r.service.disk_full()
        assert detail is not None and "10 MiB free" in detail and str(database) in detail
        with pytest.raises(DiskFull):
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        room[database] = 2**30
        assert await r.service.disk_full() is None


async def test_a_disk_that_does_not_answer_stalls_nothing_and_refuses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hung network mount: statvfs never returns. One look at a time, each waited for briefly.
    monkeypatch.setattr(service_module, "DISK_PROBE_SECONDS", 0.2)
    answer = threading.Event()
    looks: list[Path] = []

    def hung(folder: Path) -> int:
        looks.append(folder)
        answer.wait(10)
        return 2**40

    async with rig(tmp_path, free_bytes=hung) as r:
        try:
            started = time.monotonic()
            assert await asyncio.gather(*(r.service.disk_full() for _ in range(5))) == [None] * 5
            assert time.monotonic() - started < 2
            made = await r.service.submit(
                ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN
            )
            assert len(looks) == 1  # one thread held by the hung disk, not one per look
        finally:
            answer.set()
        await _wait_for_state(r.jobs, made.job.job_id, JobState.DELIVERED)


async def test_a_disk_that_fills_while_the_picture_is_saved_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = Image.Image.save

    def full(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(fp, str | Path):  # into memory: no disk to fill
            return save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device")

    async with rig(tmp_path) as r:
        monkeypatch.setattr(Image.Image, "save", full)
        with pytest.raises(DiskFull) as refused:
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert "out of disk space" in refused.value.user_message
        assert (await r.service.quota(ALICE)).remaining == 3
        assert await r.jobs.active_for_user(1, 10) == []
        assert list((tmp_path / "in").iterdir()) == []  # no half-written picture left


async def test_a_clip_that_fills_the_disk_while_encoding_is_refunded_and_says_why(
    tmp_path: Path,
) -> None:
    class FullDisk(FakeEncoder):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

    async with rig(tmp_path, encoder=FullDisk()) as r:
        made = await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN)
        failed = await _wait_for_state(r.jobs, made.job.job_id, JobState.FAILED)
        assert failed.error is not None and "out of disk space" in failed.error
        assert "GPU" not in failed.error  # not the GPU's fault, as a generic failure would say
        assert (await r.service.quota(ALICE)).remaining == 3


async def test_a_failing_job_is_refunded_and_the_next_one_runs(tmp_path: Path) -> None:
    def fail_on_high_motion(options: AnimateOptions) -> BaseException | None:
        if options.motion_bucket_id == 255:
            return GenerationFailed("The GPU ran out of memory.", reason="oom")
        return None

    engine = FakeEngine(frames=4, step_seconds=0.001, fail_when=fail_on_high_motion)
    async with rig(tmp_path, engine) as r:
        await r.service.submit(ALICE, png(), AnimateOptions(motion_bucket_id=255), ORIGIN)
        await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        await r.presenter.until(2)
        assert r.presenter.failures == ["The GPU ran out of memory."]
        assert len(r.presenter.delivered) == 1
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_clip_the_engine_refuses_the_options_of_is_refunded(tmp_path: Path) -> None:
    # Options are checked at submit; a refusal later is the host's set-up (a GPU worker without
    # the model), and the member must not lose a clip for it.
    def no_such_model(options: AnimateOptions) -> BaseException | None:
        return InvalidOptions("model", "This GPU worker does not have that model.")

    engine = FakeEngine(frames=4, step_seconds=0.001, fail_when=no_such_model)
    async with rig(tmp_path, engine) as r:
        accepted = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        await r.presenter.until(1)
        assert r.presenter.failures == ["This GPU worker does not have that model."]
        assert await r.quotas.reservation_state(accepted.job.job_id) == "refunded"
        assert (await r.service.quota(ALICE)).remaining == 3


@pytest.mark.parametrize("lost", ["failed", "refund", "cancelled"])
async def test_a_clip_whose_end_could_not_be_recorded_is_still_refunded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    # The member was told they were not charged, but the database was locked (or full) as the
    # clip failed, or was cancelled: its reservation stayed held, and its row "running", until a
    # restart made the clip again and charged it when posted.
    def oom(options: AnimateOptions) -> BaseException | None:
        return (
            GenerationFailed("The GPU ran out of memory.", reason="oom")
            if lost != "cancelled"
            else None
        )

    engine = FakeEngine(
        frames=4, step_seconds=0.05 if lost == "cancelled" else 0.001, fail_when=oom
    )
    async with rig(tmp_path, engine) as r:
        monkeypatch.setattr(r.service, "record_retry_seconds", 0.01)
        if lost == "refund":
            refund, refunds = r.quotas.refund, []

            async def locked_refund(job_id: str) -> bool:
                if len(refunds) < 2:  # the journal's, then the first try again
                    refunds.append(job_id)
                    raise sqlite3.OperationalError("database is locked")
                return await refund(job_id)

            monkeypatch.setattr(r.quotas, "refund", locked_refund)
            writes = refunds
        else:
            end = JobState.FAILED if lost == "failed" else JobState.CANCELLED
            writes = _locked(monkeypatch, r.jobs, end, times=2)
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=20), ORIGIN
        )
        job_id = accepted.job.job_id
        if lost == "cancelled":
            await _wait_for_state(r.jobs, job_id, JobState.RUNNING)
            assert [job.job_id for job in await r.service.cancel(ALICE, job_id)] == [job_id]
        await r.presenter.until(1)
        async with asyncio.timeout(10):
            while True:  # the retries run in a task of their own
                if await r.quotas.reservation_state(job_id) == "refunded":
                    break
                await asyncio.sleep(0.01)
        assert writes == [job_id] * 2  # lost twice, recorded at the third try
        final = JobState.CANCELLED if lost == "cancelled" else JobState.FAILED
        assert (await r.jobs.get(job_id)).state is final  # type: ignore[union-attr]
        assert (await r.service.quota(ALICE)).remaining == 3
        assert r.presenter.delivered == []


async def test_the_per_member_cap_counts_every_server_and_says_so(tmp_path: Path) -> None:
    engine = FakeEngine(frames=4, step_seconds=0.5)
    async with rig(tmp_path, engine) as r:
        for _ in range(2):
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        with pytest.raises(TooManyJobs) as here:
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert "another server" not in here.value.user_message
        elsewhere = Member(guild_id=2, user_id=ALICE.user_id)
        with pytest.raises(TooManyJobs) as there:
            await r.service.submit(elsewhere, png(), AnimateOptions(), ORIGIN)
        assert there.value.elsewhere == 2
        assert "You already have 2 clips waiting" in there.value.user_message
        assert "2 of them in another server" in there.value.user_message
        assert (await r.service.quota(elsewhere)).remaining == 3  # nothing charged there
        await r.service.cancel(ALICE, None)


async def test_more_motion_at_the_most_motion_is_refused_before_charging(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        made = await r.service.submit(
            ALICE, png(), AnimateOptions(motion_bucket_id=250, num_inference_steps=1), ORIGIN
        )
        await _wait_for_state(r.jobs, made.job.job_id, JobState.DELIVERED)
        more = await r.service.vary(ALICE, made.job.job_id, "more", ORIGIN)
        assert AnimateOptions.from_dict(more.job.options).motion_bucket_id == 255
        await _wait_for_state(r.jobs, more.job.job_id, JobState.DELIVERED)
        with pytest.raises(GenerationError) as info:
            await r.service.vary(ALICE, more.job.job_id, "more", ORIGIN)
        assert "already has the most motion" in info.value.user_message
        assert (await r.service.quota(ALICE)).remaining == 1  # the two clips made, no more
        less = await r.service.vary(ALICE, more.job.job_id, "less", ORIGIN)
        assert AnimateOptions.from_dict(less.job.options).motion_bucket_id == 215


async def test_a_restart_settles_reservations_a_crash_left_behind(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        # Killed between the reservation and the job's record, and between a job's failure and
        # its refund: both clips would stay counted for the whole period.
        await r.quotas.reserve(1, 10, (), "never-written")
        failed = JobRecord(job_id="e" * 32, guild_id=1, channel_id=5, user_id=10)
        await r.jobs.create(failed)
        await r.quotas.reserve(1, 10, (), failed.job_id)
        await r.jobs.set_state(failed.job_id, JobState.FAILED, error="The GPU ran out of memory.")
        assert (await r.service.quota(ALICE)).remaining == 1
    async with rig(tmp_path) as r:
        counts = await r.service.resume(r.presenter)
        assert counts["settled"] == 2
        assert (await r.service.quota(ALICE)).remaining == 3
        assert await r.quotas.reservation_state("never-written") == "refunded"


async def test_clips_left_by_a_stop_during_start_up_wait_for_the_next_start(
    tmp_path: Path,
) -> None:
    slow = FakeEngine(frames=4, step_seconds=0.5)
    async with rig(tmp_path, slow) as r:
        first = await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=10), ORIGIN)
        second = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        await _wait_for_state(r.jobs, first.job.job_id, JobState.RUNNING)
    ids = [first.job.job_id, second.job.job_id]
    # The next start is stopped while it resumes (a stop signal, a GPU given up on at load).
    async with rig(tmp_path) as r:
        await r.queue.stop(1)
        counts = await r.service.resume(r.presenter)
        assert counts["failed"] == 0 and r.presenter.failures == []
        states = [(await r.jobs.get(job_id)).state for job_id in ids]  # type: ignore[union-attr]
        assert JobState.FAILED not in states, states
        assert (await r.service.quota(ALICE)).remaining == 1  # both still held, none refunded
    async with rig(tmp_path) as r:
        await r.service.resume(r.presenter)
        for job_id in ids:
            await _wait_for_state(r.jobs, job_id, JobState.DELIVERED)
        assert (await r.service.quota(ALICE)).remaining == 1  # each charged once


async def test_a_refused_clip_whose_failure_was_not_written_is_not_made_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r:

        async def full(request: Any, **kwargs: Any) -> JobEvent:
            raise QueueFull(50, 50)

        monkeypatch.setattr(r.queue, "submit", full)
        _locked(monkeypatch, r.jobs, JobState.FAILED, times=1)
        with pytest.raises(QueueFull):
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        (left,) = await r.jobs.unfinished()  # "failed" was lost; the refund was not
        assert (await r.service.quota(ALICE)).remaining == 3
    async with rig(tmp_path) as r:
        counts = await r.service.resume(r.presenter)
        # The member was told "the queue is full, nothing was charged" then: not told again
        # that its files were lost, nor is the clip made now, for free.
        assert counts["failed"] == 1 and r.presenter.failures == []
        assert (await r.jobs.get(left.job_id)).state is JobState.FAILED  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
        assert r.engine.runs == 0
        assert (await r.service.quota(ALICE)).remaining == 3


async def test_a_clip_cancelled_while_encoding_is_not_posted_or_charged(tmp_path: Path) -> None:
    async with rig(tmp_path, encoder=FakeEncoder(seconds=0.5)) as r:
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=2), ORIGIN
        )
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.ENCODING)
        cancelled = await r.service.cancel(ALICE, accepted.job.job_id)
        assert [job.job_id for job in cancelled] == [accepted.job.job_id]
        await r.presenter.until(1)
        assert r.presenter.cancels == [accepted.job.job_id] and r.presenter.delivered == []
        assert (await r.service.quota(ALICE)).remaining == 3


async def test_a_waiting_clip_cancelled_during_a_shutdown_stays_cancelled(tmp_path: Path) -> None:
    async with rig(tmp_path, FakeEngine(frames=4, step_seconds=0.1)) as r:
        await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=10), ORIGIN)
        waiting = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=2), ORIGIN
        )
        await _wait_for_state(r.jobs, waiting.job.job_id, JobState.QUEUED)
        # SIGTERM: the grace period lets the running clip finish; the waiting one is kept.
        stopping = asyncio.create_task(r.queue.stop(5))
        for _ in range(200):
            if r.queue.snapshot().state == "stopping":
                break
            await asyncio.sleep(0.01)
        cancelled = await r.service.cancel(ALICE, waiting.job.job_id)
        await stopping
        assert [job.job_id for job in cancelled] == [waiting.job.job_id]
        record = await r.jobs.get(waiting.job.job_id)
        assert record is not None and record.state is JobState.CANCELLED  # not made after it
        assert waiting.job.job_id in r.presenter.cancels
        assert (await r.service.quota(ALICE)).remaining == 2  # only the clip that was made


async def test_a_clip_cancelled_before_its_shutdown_notice_is_shown_is_not_said_to_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shutdown's "interrupted" events are shown one Discord call at a time, so the member's
    # Cancel can land first; "it will be made after the restart" then replaced "cancelled".
    async with rig(tmp_path, FakeEngine(frames=4, step_seconds=0.05)) as r:
        gate = asyncio.Event()
        dispatch = r.service._dispatch

        async def behind(presenter: Any, event: JobEvent) -> None:
            if event.kind is EventKind.INTERRUPTED:
                await gate.wait()
            await dispatch(presenter, event)

        monkeypatch.setattr(r.service, "_dispatch", behind)
        await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=10), ORIGIN)
        waiting = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        stopping = asyncio.create_task(r.queue.stop(5))
        await _wait_for_state(r.jobs, waiting.job.job_id, JobState.QUEUED)
        for _ in range(200):
            if r.queue.snapshot().state == "stopping":
                break
            await asyncio.sleep(0.01)
        assert await r.service.cancel(ALICE, waiting.job.job_id)
        gate.set()
        await stopping
        await r.presenter.until(2)  # the running clip delivered, the waiting one cancelled
        assert r.presenter.cancels == [waiting.job.job_id]
        assert r.presenter.interruptions == []


async def test_cancels_during_a_shutdown_are_honoured_for_every_clip(tmp_path: Path) -> None:
    members = [Member(guild_id=1, user_id=20 + i) for i in range(6)]
    async with rig(tmp_path, FakeEngine(frames=4, step_seconds=1.0)) as r:
        running = await r.service.submit(
            members[0], png(), AnimateOptions(num_inference_steps=5), ORIGIN
        )
        waiting = [
            await r.service.submit(member, png(), AnimateOptions(num_inference_steps=2), ORIGIN)
            for member in members[1:]
        ]
        await _wait_for_state(r.jobs, running.job.job_id, JobState.RUNNING)
        # SIGTERM with a short grace: the clip on the GPU is stopped at its next step.
        stopping = asyncio.create_task(r.queue.stop(0.1))
        last = waiting[-1]
        assert await r.service.cancel(members[-1], last.job.job_id)  # while the line closes
        await asyncio.sleep(0.4)  # the grace is over; the engine has not reached a step yet
        assert await r.service.cancel(members[0], running.job.job_id)
        await stopping
        for accepted in (running, last):
            record = await r.jobs.get(accepted.job.job_id)
            assert record is not None and record.state is JobState.CANCELLED, record.state
        for accepted in waiting[:-1]:  # kept for after the restart
            record = await r.jobs.get(accepted.job.job_id)
            assert record is not None and record.state is JobState.QUEUED
        assert (await r.service.quota(members[0])).remaining == 3


async def test_a_clip_that_could_not_be_queued_is_failed_before_it_is_refunded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r:

        async def refused(*_args: object, **_kwargs: object) -> None:
            raise QueueClosed()

        async def crash(_job_id: str) -> None:
            raise RuntimeError("the process died here")

        monkeypatch.setattr(r.queue, "submit", refused)
        monkeypatch.setattr(r.quotas, "refund", crash)
        with pytest.raises(RuntimeError):
            await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=2), ORIGIN)
        # Whatever happens at the refund, the job is already failed: a restart will not make
        # it (for free, its reservation refunded) after the member was told it failed.
        assert await r.jobs.unfinished() == []


async def test_re_rolling_a_clip_of_a_model_no_longer_offered_costs_nothing(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=2), ORIGIN
        )
        made = await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        # A clip made before the host took its model off the list.
        old = replace(made, job_id="from-an-old-model", options={**made.options, "model": "old"})
        await r.jobs.create(old)
        with pytest.raises(GenerationError) as info:
            await r.service.vary(ALICE, old.job_id, "reroll", ORIGIN)
        assert "no longer on this server" in info.value.user_message
        assert (await r.service.quota(ALICE)).remaining == 2  # only the first clip


async def test_quota_exhaustion_says_when_and_costs_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        for done in range(1, 4):
            await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN)
            await r.presenter.until(done)
        with pytest.raises(QuotaExceeded) as info:
            await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        assert "<t:" in info.value.user_message
        # Told before the picture is even decoded (a big one costs seconds and RAM).
        with pytest.raises(QuotaExceeded):
            await r.service.submit(ALICE, b"not decoded at all", AnimateOptions(), ORIGIN)


async def test_steps_above_the_servers_cap_are_refused(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        with pytest.raises(InvalidOptions) as info:
            await r.service.build_options(1, num_inference_steps=45)
        assert "at most 30 steps" in info.value.user_message


async def test_a_model_the_host_no_longer_runs_is_refused_with_what_to_do(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert (await r.service.build_options(1, model="m")).model == "m"
        with pytest.raises(InvalidOptions) as info:
            await r.service.build_options(1, model="stabilityai/gone")
        assert info.value.field == "model"
        assert "no longer available" in info.value.user_message
        assert "leave it out" in info.value.user_message


async def test_a_queued_clip_keeps_its_picture_when_reading_it_back_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, FakeEngine(frames=4, step_seconds=0.05)) as r:
        submit, get = r.queue.submit, r.jobs.get
        queued: list[str] = []

        async def submitted(request: Any) -> JobEvent:
            event = await submit(request)
            queued.append(request.job_id)
            return event

        async def locked_once(job_id: str) -> JobRecord | None:
            if queued == [job_id]:
                queued.append("read")  # the read right after the submit, once
                raise sqlite3.OperationalError("database is locked")
            return await get(job_id)

        monkeypatch.setattr(r.queue, "submit", submitted)
        monkeypatch.setattr(r.jobs, "get", locked_once)
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        assert queued[-1] == "read"
        assert accepted.job.input_path and await asyncio.to_thread(
            Path(accepted.job.input_path).exists
        )
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_lowered_step_cap_applies_to_default_steps_and_re_rolls(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        made = await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=20), ORIGIN)
        await _wait_for_state(r.jobs, made.job.job_id, JobState.DELIVERED)
        await r.service.guilds.update(1, 99, max_steps=10)
        assert (await r.service.build_options(1)).num_inference_steps == 10
        assert (await r.service.build_options(1, preset="subtle")).num_inference_steps == 10
        again = await r.service.vary(ALICE, made.job.job_id, "reroll", ORIGIN)
        assert AnimateOptions.from_dict(again.job.options).num_inference_steps == 10


async def test_draft_quality_is_feature_caching_and_anything_else_is_refused(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        draft = await r.service.build_options(1, quality="draft", preset="dramatic")
        assert (draft.cache_interval, draft.quality, draft.preset) == (3, "draft", "dramatic")
        best = await r.service.build_options(1, quality="best")
        assert best.cache_interval == 1 and best == await r.service.build_options(1)
        with pytest.raises(InvalidOptions) as info:
            await r.service.build_options(1, quality="ultra")
        assert "best or draft" in info.value.user_message


async def test_a_spoiler_pictures_clip_and_its_re_rolls_are_spoilers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        made = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=2), ORIGIN, spoiler=True
        )
        plain = await r.service.submit(ALICE, png(), AnimateOptions(num_inference_steps=2), ORIGIN)
        await _wait_for_state(r.jobs, made.job.job_id, JobState.DELIVERED)
        stored = await r.jobs.get(made.job.job_id)
        assert stored is not None and stored.spoiler is True
        again = await r.service.vary(ALICE, made.job.job_id, "more", ORIGIN)
        assert again.job.spoiler is True and plain.job.spoiler is False


def test_a_stored_clip_with_a_retired_preset_still_reads() -> None:
    # Every delivery, re-roll and restart reads stored options: a preset a later version
    # dropped must not keep a finished clip from being posted.
    stored = AnimateOptions.from_preset("dramatic").to_dict() | {"preset": "retired"}
    options = AnimateOptions.from_dict(stored)
    assert options.preset is None and options.motion_bucket_id == 190


async def test_a_members_own_defaults_fill_what_they_did_not_type(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.service.guilds.update(1, 99, default_format="mp4")
        await r.service.set_my_defaults(ALICE.user_id, preset="dramatic", format="gif", fps=12)
        await r.service.set_my_defaults(ALICE.user_id, quality="draft")  # the others stay
        mine = await r.service.build_options(1, user_id=ALICE.user_id)
        assert (mine.preset, mine.motion_bucket_id, mine.noise_aug_strength) == (
            "dramatic",
            190,
            0.1,
        )
        assert (mine.format, mine.fps, mine.quality) == ("gif", 12, "draft")
        # What they type wins; a typed motion or preset replaces the default motion whole.
        typed = await r.service.build_options(
            1, user_id=ALICE.user_id, motion_bucket_id=40, format="mp4", quality="best"
        )
        assert (typed.preset, typed.motion_bucket_id, typed.noise_aug_strength) == (None, 40, 0.02)
        assert (typed.format, typed.fps, typed.quality) == ("mp4", 12, "best")
        subtle = await r.service.build_options(1, user_id=ALICE.user_id, preset="subtle")
        assert (subtle.preset, subtle.motion_bucket_id) == ("subtle", 70)
        # Someone else's, and no one's: the server's format.
        other = await r.service.build_options(1, user_id=ALICE.user_id + 1)
        assert other == await r.service.build_options(1) and other.format == "mp4"
        # Motion is one default: a motion set later replaces the preset (and its noise), a
        # preset set later the motion; both given at once, the number tunes the preset.
        await r.service.set_my_defaults(ALICE.user_id, motion_bucket_id=200)
        number = await r.service.build_options(1, user_id=ALICE.user_id)
        assert (number.preset, number.motion_bucket_id, number.noise_aug_strength) == (
            None,
            200,
            0.02,
        )
        await r.service.set_my_defaults(ALICE.user_id, preset="subtle")
        named = await r.service.build_options(1, user_id=ALICE.user_id)
        assert (named.preset, named.motion_bucket_id) == ("subtle", 70)
        await r.service.set_my_defaults(ALICE.user_id, preset="dramatic", motion_bucket_id=150)
        tuned = await r.service.build_options(1, user_id=ALICE.user_id)
        assert (tuned.preset, tuned.motion_bucket_id, tuned.noise_aug_strength) == (
            "dramatic",
            150,
            0.1,
        )
        # Bounce and smooth: the member's own until they type otherwise.
        await r.service.set_my_defaults(ALICE.user_id, ping_pong=True, interpolate=True)
        both = await r.service.build_options(1, user_id=ALICE.user_id)
        assert both.ping_pong and both.interpolate
        one = await r.service.build_options(1, user_id=ALICE.user_id, interpolate=False)
        assert one.ping_pong and not one.interpolate
        await r.service.set_my_defaults(ALICE.user_id, ping_pong=False, interpolate=False)
        assert (await r.service.my_defaults(ALICE.user_id)).chosen() == {
            "preset": "dramatic",
            "motion_bucket_id": 150,
            "format": "gif",
            "fps": 12,
            "quality": "draft",
        }
        # One forgotten, the others kept; motion is one default (a preset or a number).
        await r.service.set_my_defaults(
            ALICE.user_id, forget=("format", "preset", "motion_bucket_id")
        )
        assert (await r.service.my_defaults(ALICE.user_id)).chosen() == {
            "fps": 12,
            "quality": "draft",
        }
        await r.service.set_my_defaults(ALICE.user_id, preset="dramatic", motion_bucket_id=150)
        await r.service.set_my_defaults(ALICE.user_id, format="gif")
        # A preset a later version no longer offers is no default, not every clip refused.
        await r.service._defaults.update(ALICE.user_id, preset="retired", motion_bucket_id=None)
        assert (await r.service.build_options(1, user_id=ALICE.user_id)).preset is None
        # Reset: back to everyone's defaults, and no row left behind.
        cleared = await r.service.set_my_defaults(ALICE.user_id, reset=True)
        assert cleared.chosen() == {}
        assert await r.service.build_options(1, user_id=ALICE.user_id) == other
        assert (await r.service.my_defaults(ALICE.user_id)).chosen() == {}


async def test_fit_whole_keeps_the_whole_picture_for_the_clip_and_its_re_rolls(
    tmp_path: Path,
) -> None:
    square = io.BytesIO()
    pixels = np.full((300, 300, 3), (220, 30, 30), np.uint8)
    pixels[:30] = (30, 30, 220)  # a band along the top, which a crop to 16:9 cuts off
    Image.fromarray(pixels).save(square, format="PNG")
    async with rig(tmp_path) as r:
        await r.service.set_my_defaults(ALICE.user_id, fit="whole")
        options = await r.service.build_options(1, user_id=ALICE.user_id)
        accepted = await r.service.submit(ALICE, square.getvalue(), options, ORIGIN)
        assert accepted.job.input_path is not None
        with Image.open(accepted.job.input_path) as kept:
            assert kept.size == (256, 144) and kept.getpixel((128, 1))[2] > 200
        # Re-roll and More motion start from the same whole picture, and say it is whole.
        for variation in ("reroll", "more"):
            again = await r.service.vary(
                replace(ALICE, user_id=3), accepted.job.job_id, variation, ORIGIN
            )
            assert AnimateOptions.from_dict(again.job.options).fit == "whole"
            assert again.job.input_path is not None
            with Image.open(again.job.input_path) as kept:
                assert kept.getpixel((128, 1))[2] > 200
        plain = await r.service.submit(
            replace(ALICE, user_id=2), square.getvalue(), AnimateOptions(), ORIGIN
        )
        assert plain.job.input_path is not None
        with Image.open(plain.job.input_path) as kept:
            assert kept.getpixel((128, 1)) == (220, 30, 30)


async def test_the_overview_for_help_is_what_this_member_gets_here_now(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.service.guilds.update(1, 99, max_steps=10, default_format="gif")
        await r.service.set_my_defaults(ALICE.user_id, fps=12)
        await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        seen = await r.service.overview(replace(ALICE, is_moderator=True))
        assert seen.quota.remaining == 2 and seen.quota.limit == 3
        assert (seen.options.format, seen.options.fps, seen.options.num_inference_steps) == (
            "gif",
            12,
            10,
        )
        assert seen.defaults.chosen() == {"fps": 12} and seen.max_steps == 10
        assert seen.is_moderator and seen.image_limits.max_bytes == 25 * 2**20
        # Someone else there: their own quota, the server's settings, no moderator commands.
        bob = await r.service.overview(replace(ALICE, user_id=ALICE.user_id + 1))
        assert bob.quota.remaining == 3 and bob.options.fps == 7 and not bob.is_moderator


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"fps": 0}, "`fps` must be a whole number from 1 to 30"),
        ({"motion_bucket_id": 300}, "from 0 to 255"),
        ({"quality": "ultra"}, "best or draft"),
        ({"preset": "wild"}, "subtle, normal, dramatic"),
        ({"format": "webm"}, "`mp4` or `gif`"),
        ({"ping_pong": "yes"}, "`ping_pong` must be true or false"),
    ],
)
async def test_a_default_out_of_range_is_refused_and_nothing_changes(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    async with rig(tmp_path) as r:
        await r.service.set_my_defaults(ALICE.user_id, fps=9)
        with pytest.raises(InvalidOptions) as info:
            await r.service.set_my_defaults(ALICE.user_id, **{"quality": "draft", **change})
        assert says in info.value.user_message
        assert (await r.service.my_defaults(ALICE.user_id)).chosen() == {"fps": 9}


async def test_an_undeliverable_clip_stays_on_disk_uncharged(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.presenter.refuse_uploads = True
        accepted = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        job = await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DONE)
        assert job.output_path and await asyncio.to_thread(Path(job.output_path).exists)
        status = await r.quotas.reservation_state(accepted.job.job_id)
        assert status is not None and str(status) != "charged"


@dataclass
class ManualClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


# Retries only when a test asks (redeliver_due), never from the background loop.
BY_HAND = RedeliveryPolicy(first_delay=60, max_delay=3600, give_up_seconds=86400, check_every=1e6)


async def _attempts(r: Rig, count: int) -> None:
    """Until the service has tried to post `count` times and taken note of how each went."""
    async with asyncio.timeout(10):
        while len(r.presenter.attempts) < count:
            r.presenter.changed.clear()
            await r.presenter.changed.wait()
        await r.service.close()  # waits for the delivery tasks, not just the presenter


async def _a_refused_clip(r: Rig) -> str:
    """A clip made and refused by Discord once (the presenter refuses until told otherwise)."""
    r.presenter.refuse_uploads = True
    accepted = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
    await _attempts(r, 1)
    await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DONE)
    return accepted.job.job_id


async def test_a_refused_clip_is_tried_again_less_often_and_the_member_told_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        job_id = await _a_refused_clip(r)
        assert await r.service.redeliver_due(r.presenter) == 0  # not yet
        clock.now += 61
        assert await r.service.redeliver_due(r.presenter) == 1
        await _attempts(r, 2)
        clock.now += 61
        assert await r.service.redeliver_due(r.presenter) == 0  # now every 2 min
        clock.now += 60
        r.presenter.refuse_uploads = False
        assert await r.service.redeliver_due(r.presenter) == 1
        job = await _wait_for_state(r.jobs, job_id, JobState.DELIVERED)
        # Told of the refusal once, not at every retry.
        assert r.presenter.attempts == [True, False, False]
        assert r.presenter.delivered == [job_id]
        assert (await r.service.quota(ALICE)).remaining == 2
        assert job.output_path and not await asyncio.to_thread(Path(job.output_path).exists)
        assert await r.service.redeliver_due(r.presenter) == 0


async def test_after_a_restart_a_refused_clip_is_retried_without_telling_the_member_again(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        job_id = await _a_refused_clip(r)
        clock.now += 61
        assert await r.service.redeliver_due(r.presenter) == 1
        await _attempts(r, 2)
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        r.presenter.refuse_uploads = True
        assert (await r.service.resume(r.presenter))["redelivered"] == 1
        await _attempts(r, 1)  # tried again at once: the restart may have fixed it
        assert r.presenter.attempts == [False]  # told before the restart, not again
        # The third refusal waits 4 minutes, as it would have without the restart.
        clock.now += 3 * 60 + 50
        assert await r.service.redeliver_due(r.presenter) == 0
        clock.now += 20
        r.presenter.refuse_uploads = False
        assert await r.service.redeliver_due(r.presenter) == 1
        await _wait_for_state(r.jobs, job_id, JobState.DELIVERED)
        assert r.presenter.attempts == [False, False]
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_finished_clip_whose_file_was_lost_is_made_again_after_a_restart(
    tmp_path: Path,
) -> None:
    # The host cleaned outputs/ while the clip waited to be posted: the picture and the seed
    # are kept, so the member gets the same clip rather than "lost, use /animate again".
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        job_id = await _a_refused_clip(r)
        await r.jobs.increment_attempts(job_id)  # made on its second try: the first crashed
        job = await r.jobs.get(job_id)
        assert job is not None and job.output_path is not None and job.seed is not None
        await asyncio.to_thread(Path(job.output_path).unlink)
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        assert (await r.service.resume(r.presenter))["retried"] == 1
        again = await _wait_for_state(r.jobs, job_id, JobState.DELIVERED)
        assert again.seed == job.seed and r.presenter.delivered == [job_id]
        assert again.attempts == 1  # the remake is a first try: a crash in it is retried
        assert not r.presenter.failures
        assert (await r.service.quota(ALICE)).remaining == 2  # charged once


async def test_a_clip_refused_for_a_day_is_given_up_and_refunded(tmp_path: Path) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        job_id = await _a_refused_clip(r)
        clock.now += 86400
        assert await r.service.redeliver_due(r.presenter) == 1
        job = await _wait_for_state(r.jobs, job_id, JobState.FAILED)
        assert r.presenter.failures and "gave up" in r.presenter.failures[0]
        assert job.error and "not charged" in job.error
        assert (await r.service.quota(ALICE)).remaining == 3


async def test_a_refused_clip_is_handed_over_when_the_member_asks(tmp_path: Path) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        job_id = await _a_refused_clip(r)
        posted: list[tuple[str, bool]] = []

        async def refuse(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            return False

        async def post(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            assert event.clip is not None
            posted.append((job.job_id, await asyncio.to_thread(event.clip.path.exists)))
            return True

        assert [job.job_id for job in await r.service.hand_over(ALICE, refuse)] == [job_id]
        assert (await r.jobs.get(job_id)).state is JobState.DONE  # type: ignore[union-attr]
        assert await r.service.hand_over(Member(guild_id=1, user_id=99), post) == []  # not theirs
        assert posted == []
        assert await r.service.hand_over(ALICE, post) == []
        assert posted == [(job_id, True)]
        assert (await r.jobs.get(job_id)).state is JobState.DELIVERED  # type: ignore[union-attr]
        assert (await r.service.quota(ALICE)).remaining == 2
        # The scheduled retry finds nothing left to do, and nothing is posted twice.
        clock.now += 3600
        assert await r.service.redeliver_due(r.presenter) == 0
        assert await r.service.hand_over(ALICE, post) == []
        assert len(posted) == 1 and len(r.presenter.attempts) == 1


async def test_a_hand_over_that_fails_costs_the_member_neither_other_clips_nor_a_second_post(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        r.presenter.refuse_uploads = True
        first = (await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)).job.job_id
        second = (await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)).job.job_id
        await _attempts(r, 2)
        posted: list[str] = []

        async def flaky(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            if job.job_id == first:
                raise ConnectionResetError("the connection dropped before Discord answered")
            posted.append(job.job_id)
            await on_posted()
            raise RuntimeError("the progress message could not be tidied away")

        # One clip's lost connection leaves the other to be posted; the one posted counts as
        # posted although what came after failed.
        refused = await r.service.hand_over(ALICE, flaky)
        assert [job.job_id for job in refused] == [first] and posted == [second]
        assert (await r.jobs.get(second)).state is JobState.DELIVERED  # type: ignore[union-attr]
        assert (await r.jobs.get(first)).state is JobState.DONE  # type: ignore[union-attr]
        assert (await r.service.quota(ALICE)).remaining == 1  # one charged, one held

        async def post(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            posted.append(job.job_id)
            return True

        assert await r.service.hand_over(ALICE, post) == []
        assert posted == [second, first]  # the second is not posted again
        assert (await r.service.quota(ALICE)).remaining == 1  # each charged once
        assert (await r.jobs.get(first)).state is JobState.DELIVERED  # type: ignore[union-attr]


async def test_a_posted_clip_whose_tidying_up_failed_is_charged_once_and_not_posted_again(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        r.presenter.tidying_fails = True
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        assert (await r.service.quota(ALICE)).remaining == 2
        clock.now += 3600  # no retry is due: it was posted
        assert await r.service.redeliver_due(r.presenter) == 0
        assert r.presenter.delivered == [accepted.job.job_id]


async def test_a_clip_whose_done_could_not_be_recorded_is_still_posted_and_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r:
        # The journal's write, then the delivery's first two tries: the lock lasts.
        lost = _locked(monkeypatch, r.jobs, JobState.DONE, times=3)
        monkeypatch.setattr(r.service, "record_retry_seconds", 0.01)
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        assert lost == [accepted.job.job_id] * 3
        assert r.presenter.delivered == [accepted.job.job_id]
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_posted_clip_whose_record_failed_is_not_handed_over_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r:
        _locked(monkeypatch, r.jobs, JobState.DELIVERED, times=None)
        monkeypatch.setattr(r.service, "record_retry_seconds", 0.001)  # its tries run out soon
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        await r.presenter.until(1)
        await asyncio.sleep(0.05)  # the failed record is logged
        assert (await r.jobs.get(accepted.job.job_id)).state is JobState.DONE  # type: ignore[union-attr]
        posted: list[str] = []

        async def post(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            posted.append(job.job_id)
            return True

        # The member's /queue: the row still says "done", but the clip is in the channel.
        assert await r.service.hand_over(ALICE, post) == []
        assert posted == [] and r.presenter.delivered == [accepted.job.job_id]
        jobs, _snapshot = await r.service.my_jobs(ALICE)
        assert jobs == []  # not listed as "finished: posting it now"


async def test_a_clip_a_refused_hand_over_took_from_the_pump_is_still_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The member's /queue claims the clip the moment it is made, before the pump's own
    # delivery, which then leaves it alone; the hand-over is refused too.
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        gate = asyncio.Event()
        skipped = asyncio.Event()
        dispatch = r.service._dispatch

        async def behind(presenter: Any, event: JobEvent) -> None:
            if event.kind is EventKind.DONE:
                await gate.wait()
            await dispatch(presenter, event)
            if event.kind is EventKind.DONE:
                skipped.set()

        monkeypatch.setattr(r.service, "_dispatch", behind)
        accepted = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        job_id = accepted.job.job_id
        await _wait_for_state(r.jobs, job_id, JobState.DONE)

        async def refuse(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            gate.set()
            await skipped.wait()
            await asyncio.sleep(0.05)  # the pump's delivery task runs, and finds it claimed
            return False

        assert [job.job_id for job in await r.service.hand_over(ALICE, refuse)] == [job_id]
        assert r.presenter.attempts == []
        assert await r.service.redeliver_due(r.presenter) == 1
        await _wait_for_state(r.jobs, job_id, JobState.DELIVERED)
        assert r.presenter.delivered == [job_id]
        assert r.presenter.attempts == [True]  # told, if it is refused: the progress message ends
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_posted_clip_whose_record_failed_once_is_recorded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r:
        lost = _locked(monkeypatch, r.jobs, JobState.DELIVERED, times=2)
        monkeypatch.setattr(r.service, "record_retry_seconds", 0.01)
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=3), ORIGIN
        )
        job = await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        assert len(lost) == 2 and r.presenter.delivered == [accepted.job.job_id]
        assert (await r.service.quota(ALICE)).remaining == 2
        assert job.output_path is not None
        assert not await asyncio.to_thread(Path(job.output_path).exists)  # the clip's file gone


async def test_closing_does_not_wait_out_records_being_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.service as service_module

    monkeypatch.setattr(service_module, "CLOSE_WAIT_SECONDS", 0.3)
    async with rig(tmp_path) as r:
        update = r.jobs.update

        async def locked(job_id: str, **changes: Any) -> Any:
            if "progress_message_id" in changes:
                raise sqlite3.OperationalError("database is locked")
            return await update(job_id, **changes)

        monkeypatch.setattr(r.jobs, "update", locked)
        accepted = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        await r.service.set_progress_message(accepted.job.job_id, 1234)  # tried again, for minutes
        started = time.monotonic()
        await r.service.close()
        # A stop must fit what Docker waits (not 30 s per record still being tried).
        assert time.monotonic() - started < 3


async def test_a_hand_over_and_a_retry_at_the_same_moment_post_the_clip_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with rig(tmp_path, clock=clock, redelivery=BY_HAND) as r:
        job_id = await _a_refused_clip(r)
        r.presenter.refuse_uploads = False
        clock.now += 61
        posted: list[str] = []

        async def post(job: JobRecord, event: JobEvent, on_posted: Any) -> bool:
            posted.append(job.job_id)
            return True

        # The member asks with /queue just as the scheduled retry comes round.
        await asyncio.gather(r.service.hand_over(ALICE, post), r.service.redeliver_due(r.presenter))
        await _wait_for_state(r.jobs, job_id, JobState.DELIVERED)
        await r.service.close()  # the retry's task, if it started, has finished
        assert len(posted) + len(r.presenter.delivered) == 1, (posted, r.presenter.delivered)
        assert (await r.service.quota(ALICE)).remaining == 2


async def test_a_job_that_crashed_twice_is_failed_and_refunded_on_restart(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN
        )
        await r.presenter.until(1)
    # Pretend the process died twice while the next job ran.
    metrics = Metrics(CollectorRegistry())
    async with rig(tmp_path, metrics=metrics) as r:
        job = accepted.job
        crashed = JobRecord(
            job_id="f" * 32,
            guild_id=1,
            channel_id=5,
            user_id=10,
            options=job.options,
            input_path=job.input_path,
            max_bytes=job.max_bytes,
            attempts=2,
        )
        await r.jobs.create(crashed)
        await r.quotas.reserve(1, 10, (), crashed.job_id)
        await r.jobs.set_state(crashed.job_id, JobState.RUNNING)
        counts = await r.service.resume(r.presenter)
        assert counts["failed"] == 1
        assert "stopped twice" in r.presenter.failures[0]
        assert (await r.service.quota(ALICE)).remaining == 2
    # The host's dashboard counts it with the other failures.
    failures = {"reason": "crashed"}
    assert metrics.registry.get_sample_value("svdbot_job_failures_total", failures) == 1


async def _interrupted(r: Rig, job_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if job_id in r.presenter.interruptions:
                return
            await asyncio.sleep(0.01)


async def test_a_clip_that_breaks_the_gpu_is_retried_once_after_the_restart_then_refunded(
    tmp_path: Path,
) -> None:
    # Kept "for after the restart" each time, a clip that breaks the GPU restarted the bot for
    # ever: it is left running, as after a crash, and the crash limit applies.
    engine = FakeEngine(
        frames=4,
        step_seconds=0.001,
        fail_when=lambda _o: GPUUnusable("CUDA error: an illegal memory access"),
    )
    for attempt in (1, 2):
        async with rig(tmp_path, engine=engine) as r:
            if attempt == 1:
                accepted = await r.service.submit(
                    ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN
                )
                job_id = accepted.job.job_id
            else:
                assert (await r.service.resume(r.presenter))["retried"] == 1
            await _interrupted(r, job_id)  # journaled before the presenter hears of it
            job = await r.jobs.get(job_id)
            assert job is not None and (job.state, job.attempts) == (JobState.RUNNING, attempt)
            assert not r.presenter.failures
    async with rig(tmp_path) as r:
        assert (await r.service.resume(r.presenter))["failed"] == 1
        assert "stopped twice" in r.presenter.failures[0]
        assert (await r.service.quota(ALICE)).remaining == 3  # refunded


async def test_a_restart_fails_and_refunds_waiting_clips_it_cannot_make_and_goes_on(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        accepted = await r.service.submit(
            ALICE, png(), AnimateOptions(num_inference_steps=1), ORIGIN
        )
        await r.presenter.until(1)
    source = accepted.job
    async with rig(tmp_path) as r:
        await r.quotas.set_user_limit(1, 10, 10, "day", actor_id=1)

        async def waiting(job_id: str, **options: object) -> None:
            record = JobRecord(
                job_id=job_id,
                guild_id=1,
                channel_id=5,
                user_id=10,
                options={**source.options, **options},
                input_path=source.input_path,
                max_bytes=source.max_bytes,
            )
            await r.jobs.create(record)
            await r.quotas.reserve(1, 10, (), job_id)

        # Waiting when the host took model "old" off the list and restarted.
        await waiting("a" * 32, model="old")
        # A record that no longer makes valid options (an older version wrote it).
        await waiting("b" * 32, num_inference_steps=0)
        await waiting("c" * 32)
        counts = await r.service.resume(r.presenter)
        assert counts["failed"] == 2 and counts["requeued"] == 1, counts
        assert any("no longer on this server" in text for text in r.presenter.failures)
        await _wait_for_state(r.jobs, "c" * 32, JobState.DELIVERED)  # the rest went on
        assert (await r.service.quota(ALICE)).remaining == 8  # only two clips charged


async def test_old_files_are_cleaned_up_but_recent_ones_kept(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        origin = replace(ORIGIN, application_id=3, interaction_token="tok")
        accepted = await r.service.submit(ALICE, png(), AnimateOptions(), origin)
        assert accepted.job.interaction_token == "tok"
        await _wait_for_state(r.jobs, accepted.job.job_id, JobState.DELIVERED)
        picture = Path(accepted.job.input_path or "")
        assert await r.service.clean_up() == 0  # kept for Re-roll
        assert await asyncio.to_thread(picture.exists)
        later = datetime.now(UTC) + timedelta(days=8)
        assert await r.service.clean_up(now=later) == 1
        assert not await asyncio.to_thread(picture.exists)
        job = await r.jobs.get(accepted.job.job_id)
        assert job is not None and job.input_path is None and job.interaction_token is None
        # Then, after the history kept, the job's record itself: the clip's message still lets
        # its requester (whom it names) delete it, and nobody else but moderators.
        assert await r.service.forget_history(now=later) == 0
        assert await r.service.forget_history(now=later + timedelta(days=90)) == 1
        assert await r.jobs.get(accepted.job.job_id) is None
        assert await r.service.can_delete(ALICE, accepted.job.job_id, named=ALICE.user_id)
        bob = Member(guild_id=1, user_id=11)
        assert not await r.service.can_delete(bob, accepted.job.job_id, named=ALICE.user_id)
        # A moderator's deletion of it is in the moderators' log all the same.
        mod = Member(guild_id=1, user_id=12, is_moderator=True)
        await r.service.deleted(mod, accepted.job.job_id, named=ALICE.user_id)
        (entry,) = await r.quotas.audit_log(1)
        assert (entry.action, entry.target, entry.actor_id) == ("clip.delete", "user:10", 12)


async def test_a_file_that_cannot_be_deleted_does_not_stop_the_clean_up(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        first = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        await _wait_for_state(r.jobs, first.job.job_id, JobState.DELIVERED)
        second = await r.service.submit(ALICE, png(), AnimateOptions(), ORIGIN)
        await _wait_for_state(r.jobs, second.job.job_id, JobState.DELIVERED)
        # The first's picture cannot be deleted (here: a folder in its place).
        stuck = Path(first.job.input_path or "")
        await asyncio.to_thread(stuck.unlink)
        await asyncio.to_thread(stuck.mkdir)
        later = datetime.now(UTC) + timedelta(days=8)
        assert await r.service.clean_up(now=later) == 2
        assert not await asyncio.to_thread(Path(second.job.input_path or "").exists)
        assert await r.service.clean_up(now=later) == 0  # not tried again every hour


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
async def test_a_slow_outcome_holds_up_no_other_clip(tmp_path: Path, outcome: str) -> None:
    # Telling a member their clip failed (or was cancelled) can wait on Discord for a long
    # while (its command still answering, 5xx answers retried): the next member's clip, made
    # meanwhile, is posted without waiting for that.
    def fail_on_high_motion(options: AnimateOptions) -> BaseException | None:
        if options.motion_bucket_id == 255:
            return GenerationFailed("The GPU ran out of memory.", reason="oom")
        return None

    engine = FakeEngine(frames=4, step_seconds=0.02, fail_when=fail_on_high_motion)
    async with rig(tmp_path, engine) as r:
        release = asyncio.Event()
        told = asyncio.Event()

        async def slow(*_args: Any) -> None:
            told.set()
            await release.wait()

        setattr(r.presenter, outcome, slow)
        first = await r.service.submit(
            ALICE,
            png(),
            AnimateOptions(motion_bucket_id=255 if outcome == "failed" else 127),
            ORIGIN,
        )
        if outcome == "cancelled":
            await r.service.cancel(ALICE, first.job.job_id)
        bob = Member(guild_id=1, user_id=11)
        second = await r.service.submit(bob, png(), AnimateOptions(), ORIGIN)
        async with asyncio.timeout(10):
            await told.wait()
        await _wait_for_state(r.jobs, second.job.job_id, JobState.DELIVERED)
        assert r.presenter.delivered == [second.job.job_id]
        release.set()

"""When every GPU worker is gone, members are told their clips are on hold, and nothing is lost.

A real redis-server, the bot's `RedisJobQueue` and in-process `RemoteWorker`s on the fake engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from taskiq.kicker import AsyncKicker

from generation.errors import GenerationFailed, GPUUnusable
from generation.fake_engine import FakeEncoder, FakeEngine
from generation.jobs import EventKind, JobEvent, JobRequest
from generation.options import AnimateOptions
from generation.remote import queue as remote_queue
from generation.remote.broker import Room, connect, make_broker
from generation.remote.queue import RedisJobQueue
from generation.remote.wire import TASK_NAME, Keys
from generation.remote.worker import ModelNotLoaded, RemoteWorker
from generation.worker import LocalJobQueue
from tests.fakes.redis_server import RedisServer


class Rig:
    def __init__(self, server: RedisServer, tmp: Path, reclaim_seconds: float = 30) -> None:
        self.server, self.tmp = server, tmp
        self.reclaim = reclaim_seconds
        self.keys = Keys(prefix=f"h{uuid.uuid4().hex[:8]}")
        self.picture = tmp / "picture.png"
        Image.new("RGB", (64, 32), (10, 120, 200)).save(self.picture)
        self.events: list[JobEvent] = []
        self.queue = RedisJobQueue(
            redis_url=server.url,
            output_dir=tmp / "out",
            reclaim_seconds=reclaim_seconds,
            keys=self.keys,
            tick_seconds=0.05,
            outage_notice_seconds=1.0,
            unclaimed_seconds=2.0,
        )
        self._workers: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def request(self, job_id: str, user_id: int, steps: int = 4) -> JobRequest:
        options = AnimateOptions(num_inference_steps=steps, seed=3)
        return JobRequest(job_id, user_id, options, self.picture, max_bytes=10_000_000)

    def start_worker(
        self,
        name: str,
        step_seconds: float = 0.02,
        engine: FakeEngine | None = None,
        encoder: FakeEncoder | None = None,
        job_timeout: float | None = 600.0,
        **options: Any,
    ) -> asyncio.Task[None]:
        engine = engine or FakeEngine(step_seconds=step_seconds, frames=4)
        worker = RemoteWorker(
            LocalJobQueue(
                engine,
                output_dir=self.tmp / f"{name}-out",
                encoder=encoder or FakeEncoder(),
                job_timeout=job_timeout,
            ),
            redis_url=self.server.url,
            work_dir=self.tmp / name,
            reclaim_seconds=self.reclaim,
            keys=self.keys,
            name=name,
            heartbeat_seconds=0.2,
            cancel_poll_seconds=0.02,
            grace_seconds=0,
            **options,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        self._workers.append((stop, task))
        return task

    async def stop_workers(self) -> None:
        for stop, task in self._workers:
            stop.set()
            with contextlib.suppress(ModelNotLoaded):
                await asyncio.wait_for(task, 20)
        self._workers.clear()

    def kinds(self, job_id: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.job_id == job_id]

    async def wait_for(self, what: Callable[[], bool], within: float = 15) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if what():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"not reached; events: {[(e.job_id, e.kind) for e in self.events]}")


@pytest.fixture
async def rig(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(redis_server, tmp_path) as rig:
        yield rig


@contextlib.asynccontextmanager
async def running_rig(
    server: RedisServer, tmp_path: Path, reclaim_seconds: float = 30
) -> AsyncIterator[Rig]:
    rig = Rig(server, tmp_path, reclaim_seconds)
    stream = rig.queue.events()

    async def collect() -> None:
        async for event in stream:
            rig.events.append(event)

    collector = asyncio.create_task(collect())
    await rig.queue.start()
    yield rig
    await rig.queue.stop(0)
    await rig.stop_workers()
    await asyncio.wait_for(collector, 5)


async def test_with_no_worker_clips_are_on_hold_then_made_when_one_comes(rig: Rig) -> None:
    await rig.wait_for(lambda: rig.queue.snapshot().state == "no_workers")
    for job_id, user in [("a", 1), ("b", 2), ("c", 3)]:
        await rig.queue.submit(rig.request(job_id, user))
    # Each member hears why their clip waits, and no place in line replaces that while on hold.
    await rig.wait_for(lambda: all(EventKind.STALLED in rig.kinds(j) for j in "abc"))
    await asyncio.sleep(0.2)
    for job_id in "abc":
        kinds = rig.kinds(job_id)
        assert kinds[-1] is EventKind.STALLED, (job_id, kinds)
    await rig.queue.cancel("b")  # the line moves while on hold: still no places announced
    await asyncio.sleep(0.2)
    assert rig.kinds("c")[-1] is EventKind.STALLED

    rig.start_worker("w1")
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("c"))
    assert EventKind.DONE in rig.kinds("a")
    # Back on: the waiting clip was told its place again before it started.
    c = rig.kinds("c")
    assert c.index(EventKind.STALLED) < c.index(EventKind.POSITION) < c.index(EventKind.STARTED)
    assert rig.kinds("b")[-1] is EventKind.CANCELLED


async def test_when_the_last_worker_goes_a_clip_in_flight_is_on_hold_and_finished_later(
    rig: Rig,
) -> None:
    rig.start_worker("slow", step_seconds=0.3)
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("long", 1, steps=20))
    await rig.wait_for(lambda: EventKind.STEP in rig.kinds("long"))
    await rig.stop_workers()  # SIGTERM with no grace: the job goes back to the stream
    await rig.wait_for(lambda: EventKind.STALLED in rig.kinds("long"))
    assert not any(e.terminal for e in rig.events if e.job_id == "long")

    rig.start_worker("fresh")
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("long"), within=30)
    kinds = rig.kinds("long")
    assert kinds.count(EventKind.DONE) == 1
    # On hold, then told a worker is back, then started again on it, then done.
    held = [e for e in rig.events if e.job_id == "long" and e.kind is EventKind.STALLED]
    assert [e.reason for e in held] == [None, "resuming"]
    restarted = len(kinds) - 1 - kinds[::-1].index(EventKind.STARTED)
    assert kinds.index(EventKind.STALLED) < restarted < kinds.index(EventKind.DONE)


async def _consumers(rig: Rig) -> dict[str, int]:
    """The job stream's consumers in the workers' group, with the messages each holds."""
    redis = connect(rig.server.url)
    try:
        (group,) = await redis.xinfo_groups(rig.keys.stream)
        found = await redis.xinfo_consumers(rig.keys.stream, group["name"])
        return {c["name"].decode(): int(c["pending"]) for c in found}
    finally:
        await redis.aclose()


async def test_a_worker_that_stops_with_nothing_in_hand_leaves_the_group(rig: Rig) -> None:
    # Each start is a new consumer (host and pid): without this the group would keep one for
    # every start there ever was. One still holding a job stays until another reclaims it.
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1))
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("a"))
    assert await _consumers(rig) == {"w1": 0}
    await rig.stop_workers()
    assert await _consumers(rig) == {}

    # A worker stopping with a message still in hand (Redis away as it handed it back).
    held = make_broker(rig.server.url, rig.keys, reclaim_seconds=30, consumer_name="cut-off")
    redis = connect(rig.server.url)
    try:
        await redis.xadd(rig.keys.stream, {"data": b"{}"})
        (group,) = await redis.xinfo_groups(rig.keys.stream)
        await redis.xreadgroup(group["name"], "cut-off", {rig.keys.stream: ">"}, count=1)
        assert not await held.leave_group(redis)
    finally:
        await redis.aclose()
        await held.shutdown()
    assert await _consumers(rig) == {"cut-off": 1}  # for a live worker to reclaim


# --- the next clip while the last one encodes -------------------------------------------------


async def test_a_worker_makes_the_next_clip_while_it_encodes_the_last(rig: Rig) -> None:
    # Encoding is the CPU's work: the GPU should not wait for it (issue 8's overlap), here too.
    rig.start_worker("w1", encoder=FakeEncoder(seconds=1.0))
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1))
    await rig.queue.submit(rig.request("b", 2))
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("b"))
    order = [
        (e.job_id, e.kind) for e in rig.events if e.kind in (EventKind.STARTED, EventKind.DONE)
    ]
    assert order.index(("b", EventKind.STARTED)) < order.index(("a", EventKind.DONE)), order
    assert [e.job_id for e in rig.events if e.kind is EventKind.DONE] == ["a", "b"]


async def _unread(rig: Rig) -> int:
    """Messages on the job stream that no worker has read yet."""
    redis = connect(rig.server.url)
    try:
        groups = await redis.xinfo_groups(rig.keys.stream)
        return sum(int(g.get("lag") or 0) for g in groups)
    finally:
        await redis.aclose()


async def _send_again(rig: Rig, job_id: str) -> None:
    """A job message on the stream as the bot sends one again (a lost one, after a restart):
    not through the bot's line, which sends none while no GPU is free."""
    broker = make_broker(rig.server.url, rig.keys, reclaim_seconds=30)
    redis = connect(rig.server.url)
    try:
        await redis.set(rig.keys.input(job_id), rig.picture.read_bytes())
        kicker: Any = AsyncKicker(TASK_NAME, broker, {})
        options = AnimateOptions(num_inference_steps=1, seed=1).to_dict()
        await kicker.kiq(job_id=job_id, options=options, max_bytes=10**7, user_id=9, group=0)
    finally:
        await redis.aclose()
        await broker.shutdown()


async def test_a_worker_reads_the_next_message_only_once_its_gpu_is_free(rig: Rig) -> None:
    # A message read while the GPU is busy would wait on this worker while another could make
    # it. The bot sends none then; a message sent again (a lost one, a restart) may still come.
    rig.start_worker("w1", step_seconds=0.2)
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("long", 1, steps=10))  # 2 s on the GPU
    await rig.wait_for(lambda: EventKind.STEP in rig.kinds("long"))
    extra = uuid.uuid4().hex
    redis = connect(rig.server.url)
    try:
        await _send_again(rig, extra)
        await asyncio.sleep(0.8)
        assert EventKind.ENCODING not in rig.kinds("long")
        groups = await redis.xinfo_groups(rig.keys.stream)
        assert [g["lag"] for g in groups] == [1]  # left on the stream while the GPU is busy
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("long"))
        deadline = time.monotonic() + 10
        while await redis.get(rig.keys.result(extra)) is None:  # then made at once
            assert time.monotonic() < deadline, "the second message was never made"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def test_a_worker_only_encoding_says_it_is_ready_for_a_clip(rig: Rig) -> None:
    # The bot sends a lost message again only once a worker says "ready".
    rig.start_worker("w1", encoder=FakeEncoder(seconds=1.5))
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1, steps=1))
    await rig.wait_for(lambda: EventKind.ENCODING in rig.kinds("a"))
    await rig.wait_for(lambda: [w.state for w in rig.queue.workers] == ["ready"], within=1.2)
    assert EventKind.DONE not in rig.kinds("a")
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("a"))


class _HangsOnce(FakeEngine):
    """Its first clip's decode outlasts the time limit; the next ones are quick."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().run(*args, **kwargs)
        finally:
            self.decode_seconds = 0.0


async def test_a_clip_past_its_time_limit_keeps_the_next_message_off_its_busy_gpu(
    rig: Rig,
) -> None:
    # Answered "too long" at its limit, the clip's engine call still holds the GPU (a thread
    # cannot be killed): the next clip should stay on the stream for a free worker.
    hangs = _HangsOnce(step_seconds=0.01, decode_seconds=2.5, frames=4)
    rig.start_worker("w1", engine=hangs, job_timeout=0.5)
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("slow", 1, steps=2))
    await rig.wait_for(lambda: EventKind.FAILED in rig.kinds("slow"))
    await rig.queue.submit(rig.request("next", 2, steps=1))
    await asyncio.sleep(0.8)
    redis = connect(rig.server.url)
    try:
        groups = await redis.xinfo_groups(rig.keys.stream)
    finally:
        await redis.aclose()
    assert [g["lag"] for g in groups] == [1]  # not read while the GPU is held
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("next"))


async def test_a_worker_reads_no_next_message_while_its_last_clip_holds_the_gpu(
    redis_server: RedisServer,
) -> None:
    # Read early, the next clip would wait behind this one while an idle worker could make it.
    keys = Keys(prefix=f"r{uuid.uuid4().hex[:8]}")
    broker = make_broker(redis_server.url, keys, reclaim_seconds=30, block_seconds=0.05)
    broker.room = room = Room()
    await broker.startup()
    redis = connect(redis_server.url)
    try:
        for name in (b"first", b"second", b"third"):
            await redis.xadd(keys.stream, {b"data": name})
        messages = broker.listen()
        first = await anext(messages)
        assert first.data == b"first"
        room.claim("job-1")
        reading = asyncio.ensure_future(anext(messages))
        await asyncio.sleep(0.3)
        assert not reading.done()  # job-1 is being made
        room.free_job("job-2")  # not the job read last: still closed
        await asyncio.sleep(0.2)
        assert not reading.done()
        room.free_job("job-1")  # its clip is encoding: the GPU takes the next
        second = await asyncio.wait_for(reading, 5)
        assert second.data == b"second"
        # A message whose handling ended before it was ever a job on the GPU frees it too.
        reading = asyncio.ensure_future(anext(messages))
        await asyncio.sleep(0.2)
        assert not reading.done()
        room.free_message(first)  # an old message: no effect
        await asyncio.sleep(0.2)
        assert not reading.done()
        room.free_message(second)
        assert (await asyncio.wait_for(reading, 5)).data == b"third"
        await messages.aclose()
    finally:
        await redis.aclose()
        await broker.shutdown()


# --- Redis itself going away ------------------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, kept on disk as docker-compose.yml keeps it, to restart."""
    server = RedisServer(tmp_path / "redis", persist=True)
    yield server
    server.stop()


async def test_the_bot_and_its_workers_outlive_a_redis_restart(
    restartable: RedisServer, tmp_path: Path
) -> None:
    async with running_rig(restartable, tmp_path) as rig:
        worker = rig.start_worker("w1")
        await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
        await rig.queue.submit(rig.request("before", 1))
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("before"))
        await asyncio.to_thread(restartable.restart, 1.0)
        # Every pooled connection is stale now: the next clip must not fail on one.
        await rig.queue.submit(rig.request("after", 2))
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("after"), within=30)
        assert EventKind.FAILED not in rig.kinds("after")
        assert not worker.done()  # it waited for Redis rather than exiting


async def test_a_clip_being_made_survives_a_redis_restart(
    restartable: RedisServer, tmp_path: Path
) -> None:
    async with running_rig(restartable, tmp_path) as rig:
        worker = rig.start_worker("w1", step_seconds=0.15)
        await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
        await rig.queue.submit(rig.request("long", 1, steps=20))
        await rig.wait_for(lambda: EventKind.STEP in rig.kinds("long"))
        await asyncio.to_thread(restartable.restart, 1.0)
        # Made by the same worker, once, long before any reclaim timeout (30 s here).
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("long"), within=20)
        assert rig.kinds("long").count(EventKind.STARTED) == 1
        assert not worker.done()


async def test_the_bot_and_a_worker_started_before_redis_wait_for_it(
    restartable: RedisServer, tmp_path: Path
) -> None:
    restartable.stop()  # the host boots: Redis is not answering yet
    async with running_rig(restartable, tmp_path) as rig:
        worker = rig.start_worker("w1")
        await rig.queue.submit(rig.request("early", 1))
        await asyncio.sleep(1.5)
        assert not worker.done()  # waiting, not exited
        await asyncio.to_thread(restartable.start)
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("early"), within=30)
        assert not worker.done()


class UnloadableEngine(FakeEngine):
    def load(self) -> None:
        raise GenerationFailed("The video model could not be loaded.", reason="load")


async def test_a_worker_whose_model_failed_to_load_takes_no_clips(rig: Rig) -> None:
    rig.start_worker("good")
    broken = rig.start_worker("broken", engine=UnloadableEngine(frames=4))
    with pytest.raises(ModelNotLoaded, match="could not be loaded"):
        await asyncio.wait_for(broken, 15)  # it leaves, for its supervisor to start it again
    for index in range(4):
        await rig.queue.submit(rig.request(f"j{index}", user_id=index))
    for index in range(4):
        await rig.wait_for(lambda i=index: EventKind.DONE in rig.kinds(f"j{i}"))  # type: ignore[misc]
    assert not [e for e in rig.events if e.kind is EventKind.FAILED]


async def test_members_are_told_while_redis_is_away_and_when_it_is_back(
    restartable: RedisServer, tmp_path: Path
) -> None:
    async with running_rig(restartable, tmp_path) as rig:
        rig.start_worker("w1", step_seconds=0.15)
        await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
        await rig.queue.submit(rig.request("long", 1, steps=30))
        await rig.wait_for(lambda: EventKind.STEP in rig.kinds("long"))
        await asyncio.to_thread(restartable.stop)
        # Told while Redis is away, once it is more than a blip (1 s here).
        await rig.wait_for(lambda: EventKind.STALLED in rig.kinds("long"), within=5)
        await asyncio.to_thread(restartable.start)
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("long"), within=30)
        stalls = [e.reason for e in rig.events if e.kind is EventKind.STALLED]
        assert stalls == [None, "resuming"], stalls  # on hold, then going on; nothing lost


@pytest.mark.parametrize("picture_lost", [False, True], ids=["message", "message and picture"])
async def test_a_job_message_lost_with_redis_data_is_sent_again(
    rig: Rig, picture_lost: bool
) -> None:
    # Redis restarted without its data after the bot handed the job over: the message is gone,
    # and perhaps the picture with it (sent again without it, the clip failed "upload again").
    post = rig.queue._post
    lost: list[str] = []

    async def lose_the_first(job: Any) -> None:
        if lost:
            await post(job)
            return
        lost.append(job.job_id)
        if picture_lost:
            redis = connect(rig.server.url)
            try:
                await redis.delete(rig.keys.input(job.job_id))
            finally:
                await redis.aclose()

    rig.queue._post = lose_the_first  # type: ignore[method-assign]
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("lost", 1))
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "lost"), 20)
    assert lost == ["lost"]
    (end,) = [e for e in rig.events if e.job_id == "lost" and e.terminal]
    assert end.kind is EventKind.DONE, end.error


async def test_a_job_found_running_on_a_worker_that_then_dies_is_handed_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a restart, the bot finds the job claimed (its worker was making it) and follows it;
    # that worker then dies. Its claim lapses, and the job must go to another worker, not wait
    # for the stream's reclaim timeout (many minutes on a real host).
    monkeypatch.setattr(remote_queue, "CLAIM_SECONDS", 1.0)
    redis = connect(rig.server.url)
    try:
        await redis.set(rig.keys.claim("orphan"), "dead-worker", px=500)
    finally:
        await redis.aclose()
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("orphan", 1))
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("orphan"), within=10)


async def test_a_clip_cancelled_while_its_worker_stores_it_is_not_delivered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker finished the clip before it saw the member's Cancel: the member was told
    "cancelled, not charged", so the finished clip must not be delivered (and charged)."""
    stored = asyncio.Event()
    release = asyncio.Event()
    take_in = rig.queue._on_message

    async def slow_to_hear_done(raw: bytes | str) -> None:
        if b'"done"' in (raw if isinstance(raw, bytes) else raw.encode()):
            stored.set()
            await release.wait()  # the bot has not taken the outcome in yet
        await take_in(raw)

    monkeypatch.setattr(rig.queue, "_on_message", slow_to_hear_done)
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("late", 1))
    await asyncio.wait_for(stored.wait(), 15)
    assert await rig.queue.cancel("late")  # the member is told it is cancelled
    release.set()
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "late"))
    await asyncio.sleep(0.3)  # the tick's look at the stored result, too
    assert [k for k in rig.kinds("late") if k.terminal] == [EventKind.CANCELLED]
    assert not list((rig.tmp / "out").glob("late.*"))


async def test_a_clip_cancelled_while_the_bot_takes_it_in_is_not_delivered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The member's Cancel lands while the clip is written to the bot's disk (a large one, a
    # slow disk): "cancelled, not charged" was said, so it must not be posted (and charged).
    writing, go_on = threading.Event(), threading.Event()
    write = remote_queue._write

    def slow(path: Path, data: bytes) -> None:
        writing.set()
        go_on.wait(10)
        write(path, data)

    monkeypatch.setattr(remote_queue, "_write", slow)
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("late", 1))
    await asyncio.to_thread(writing.wait, 15)
    assert await rig.queue.cancel("late")
    go_on.set()
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "late"))
    await asyncio.sleep(0.3)
    assert [k for k in rig.kinds("late") if k.terminal] == [EventKind.CANCELLED]
    assert not list((rig.tmp / "out").glob("late.*"))


async def test_a_worker_handed_a_clip_another_is_making_leaves_it_and_serves_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A model load can outlast the reclaim timeout: an idle worker then reclaims the message of
    a clip a live worker is still making. It must not sit on it (saying it is free) while the
    next clip waits for a GPU."""
    async with running_rig(redis_server, tmp_path, reclaim_seconds=1.0) as rig:
        rig.start_worker("w1", step_seconds=0.25)
        rig.start_worker("w2", step_seconds=0.25)
        await rig.wait_for(lambda: len(rig.queue.workers) == 2)
        await rig.queue.submit(rig.request("long", 1, steps=16))  # 4 s on one worker
        await asyncio.sleep(2.0)  # the other reclaims its message, idle for over 1 s
        await rig.queue.submit(rig.request("short", 2, steps=2))
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("short"), within=30)
        assert EventKind.DONE not in rig.kinds("long")  # served beside it, not after it
        await rig.wait_for(lambda: EventKind.DONE in rig.kinds("long"), within=30)
        assert rig.kinds("long").count(EventKind.STARTED) == 1  # made once


async def test_a_clip_that_broke_a_workers_gpu_fails_refunded_rather_than_going_round(
    rig: Rig,
) -> None:
    # Handed back like a shutdown's clip, a clip that breaks GPUs would take every worker down
    # in turn (each restarts to recover its GPU).
    breaks = FakeEngine(
        step_seconds=0.01,
        frames=4,
        fail_when=lambda _o: GPUUnusable("CUDA error: an illegal memory access"),
    )
    rig.start_worker("w1", engine=breaks)
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("bad", 1))
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "bad"))
    (end,) = [e for e in rig.events if e.job_id == "bad" and e.terminal]
    assert (end.kind, end.reason) == (EventKind.FAILED, "gpu")
    assert "not charged" in (end.error or "")


async def test_a_worker_whose_claim_another_took_while_redis_was_away_stops_its_run(
    rig: Rig,
) -> None:
    rig.start_worker("w1", step_seconds=0.2, claim_seconds=1.5)
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("twice", 1, steps=50))
    await rig.wait_for(lambda: EventKind.STEP in rig.kinds("twice"))
    # Cut off from Redis past its lease, w1's claim lapsed; the job was sent again, and w2
    # claimed it. w1 is back: renewing must not take the claim back, leaving both running.
    redis = connect(rig.server.url)
    try:
        await redis.set(rig.keys.claim("twice"), "w2", px=60_000)
        await asyncio.sleep(1.5)  # w1's next renewal finds w2's claim
        steps = len([e for e in rig.events if e.kind is EventKind.STEP])
        await asyncio.sleep(0.6)
        assert len([e for e in rig.events if e.kind is EventKind.STEP]) == steps  # w1 stopped
        assert await redis.get(rig.keys.claim("twice")) == b"w2"
    finally:
        await redis.aclose()
    # Nothing of w1's run reaches the member: the clip is w2's to finish.
    assert not any(e.terminal for e in rig.events if e.job_id == "twice")


async def test_a_clip_a_worker_cannot_run_fails_refunded_rather_than_being_sent_for_ever(
    rig: Rig,
) -> None:
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    # The worker's folder is gone, a file in its place (a host's mistake): every try would
    # fail the same way, and unacknowledged the job went round for ever, its member unanswered.
    work = rig.tmp / "w1"
    shutil.rmtree(work)
    work.write_text("not a folder")
    await rig.queue.submit(rig.request("stuck", 1))
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "stuck"))
    (end,) = [e for e in rig.events if e.job_id == "stuck" and e.terminal]
    assert (end.kind, end.reason) == (EventKind.FAILED, "error")
    assert "not charged" in (end.error or "")
    await asyncio.sleep(0.5)
    assert await _unread(rig) == 0 and rig.kinds("stuck").count(EventKind.FAILED) == 1


async def test_a_worker_whose_disk_is_full_fails_the_clip_refunded_rather_than_passing_it_round(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Handed back, the clip would come round to the same full worker again and again.
    write = Path.write_bytes

    def full(self: Path, data: Any) -> int:
        if self.parent == rig.tmp / "w1":  # the worker's copy of the picture
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1))
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "a"))
    (end,) = [e for e in rig.events if e.job_id == "a" and e.terminal]
    assert (end.kind, end.reason) == (EventKind.FAILED, "disk")
    assert "out of disk space" in (end.error or "") and "not charged" in (end.error or "")
    # And it takes no clips for a while, saying so: the next would fail the same way.
    await rig.wait_for(lambda: [w.state for w in rig.queue.workers] == ["disk_full"], within=3)


class _DiskFullEncoder(FakeEncoder):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_worker_whose_disk_fills_while_saving_a_clip_reads_no_more_for_a_while(
    rig: Rig,
) -> None:
    # Its last clip's encoding had opened it for the next message: the pause must close it.
    rig.start_worker("w1", encoder=_DiskFullEncoder())
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1, steps=1))
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "a"))
    (end,) = [e for e in rig.events if e.job_id == "a" and e.terminal]
    assert (end.kind, end.reason) == (EventKind.FAILED, "disk")
    await rig.wait_for(lambda: [w.state for w in rig.queue.workers] == ["disk_full"], within=3)
    # The bot sends it nothing meanwhile ...
    await rig.queue.submit(rig.request("b", 2, steps=1))
    # ... and a message sent again (a lost one, a restart) is not tried: it waits on the stream,
    # or, read by the look under way when the disk filled, is handed back to it.
    extra = uuid.uuid4().hex
    redis = connect(rig.server.url)
    try:
        await _send_again(rig, extra)
        await asyncio.sleep(0.8)
        assert await redis.get(rig.keys.result(extra)) is None  # not tried, so not failed
        assert [g["lag"] for g in await redis.xinfo_groups(rig.keys.stream)] == [1]
    finally:
        await redis.aclose()
    assert EventKind.STARTED not in rig.kinds("b")
    assert not any(e.terminal for e in rig.events if e.job_id == "b")


async def test_a_worker_whose_disk_is_full_hands_the_clip_to_one_with_room(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = Path.write_bytes

    def full(self: Path, data: Any) -> int:
        if self.parent == rig.tmp / "w1":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    rig.start_worker("w2", step_seconds=0.2)
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1, steps=25))  # 5 s on w2
    await rig.wait_for(lambda: EventKind.STEP in rig.kinds("a"))
    rig.start_worker("w1")  # free, so the next clip is read by it, and its disk is full
    await rig.wait_for(lambda: len(rig.queue.workers) == 2)
    await rig.queue.submit(rig.request("b", 2, steps=1))
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("b"), within=20)
    assert [e.kind for e in rig.events if e.job_id == "b" and e.terminal] == [EventKind.DONE]
    assert {w.name: w.state for w in rig.queue.workers}["w1"] == "disk_full"


async def test_a_clip_the_bots_full_disk_cannot_take_fails_refunded_and_the_line_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tried again on every tick, the clip would hold up the line behind it for a day.
    def full(path: Path, data: bytes) -> None:
        if path.stem == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    write = remote_queue._write
    monkeypatch.setattr(remote_queue, "_write", full)
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1))
    await rig.queue.submit(rig.request("b", 2))
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("b"))
    (end,) = [e for e in rig.events if e.job_id == "a" and e.terminal]
    assert (end.kind, end.reason) == (EventKind.FAILED, "disk")
    assert "out of disk space" in (end.error or "")


async def test_a_clip_the_bot_cannot_write_does_not_hold_up_the_line_and_fails_refunded(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a full disk (a folder whose permissions changed): the result was tried again on every
    # tick, and its error ended the tick before any other clip was sent to the free worker.
    def refused(path: Path, data: bytes) -> None:
        if path.stem == "a":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        write(path, data)

    write = remote_queue._write
    monkeypatch.setattr(remote_queue, "_write", refused)
    rig.start_worker("w1")
    await rig.wait_for(lambda: rig.queue.snapshot().state == "ready")
    await rig.queue.submit(rig.request("a", 1, steps=1))
    await rig.wait_for(lambda: any(e.terminal for e in rig.events if e.job_id == "a"))
    await rig.queue.submit(rig.request("b", 2, steps=1))
    await rig.wait_for(lambda: EventKind.DONE in rig.kinds("b"))
    (end,) = [e for e in rig.events if e.job_id == "a" and e.terminal]
    assert (end.kind, end.reason) == (EventKind.FAILED, "error")
    assert "not charged" in (end.error or "")

"""One contract, two backends: the embedded queue and taskiq over a real Redis behave the same
to the bot (order, progress, cancel waiting and running, failure, the same id twice)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from generation.errors import GenerationFailed
from generation.fake_engine import FakeEncoder, FakeEngine
from generation.jobs import EventKind, JobEvent, JobQueue, JobRequest
from generation.options import AnimateOptions
from generation.queue import FairQueue
from generation.remote.queue import RedisJobQueue
from generation.remote.wire import Keys
from generation.remote.worker import RemoteWorker
from generation.worker import LocalJobQueue
from tests.fakes.redis_server import RedisServer

STEPS = 6
OOM = "The GPU ran out of memory; you were not charged."


@dataclass
class Backend:
    queue: JobQueue
    engine: FakeEngine
    input_path: Path
    events: list[JobEvent] = field(default_factory=list)
    journal: list[JobEvent] = field(default_factory=list)
    # Redis only: another bot-side queue on the same Redis keys (the bot after a restart).
    another_bot: Callable[[], RedisJobQueue] | None = None

    def request(self, job_id: str, user_id: int = 1, *, steps: int = STEPS) -> JobRequest:
        options = AnimateOptions(num_inference_steps=steps, seed=7)
        return JobRequest(job_id, user_id, options, self.input_path, max_bytes=10_000_000)

    def kinds(self, job_id: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.job_id == job_id]

    def terminals(self, job_id: str) -> list[JobEvent]:
        return [e for e in self.events if e.job_id == job_id and e.terminal]

    async def wait_for(self, predicate: Callable[[JobEvent], bool]) -> JobEvent:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.01)
        raise AssertionError(f"no such event in {[(e.job_id, e.kind) for e in self.events]}")

    async def wait_terminal(self, job_id: str) -> JobEvent:
        return await self.wait_for(lambda e: e.job_id == job_id and e.terminal)


@pytest.fixture(params=["local", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 32), (10, 120, 200)).save(picture)
    engine = FakeEngine(step_seconds=0.02, frames=4)
    journal: list[JobEvent] = []

    async def record(event: JobEvent) -> None:
        journal.append(event)

    line = FairQueue(max_per_user=10)
    stops: list[Callable[[], object]] = []
    queue: LocalJobQueue | RedisJobQueue
    another_bot = None
    if request.param == "local":
        queue = LocalJobQueue(
            engine, output_dir=tmp_path / "out", queue=line, encoder=FakeEncoder(), journal=record
        )
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        keys = Keys(prefix=f"t{uuid.uuid4().hex[:8]}")

        def bot_queue(line: FairQueue = line) -> RedisJobQueue:
            return RedisJobQueue(
                redis_url=server.url,
                output_dir=tmp_path / "out",
                reclaim_seconds=30,
                keys=keys,
                queue=line,
                journal=record,
                tick_seconds=0.05,
            )

        queue = bot_queue()
        another_bot = lambda: bot_queue(FairQueue())  # noqa: E731
        worker = RemoteWorker(
            LocalJobQueue(engine, output_dir=tmp_path / "worker-out", encoder=FakeEncoder()),
            redis_url=server.url,
            work_dir=tmp_path / "worker",
            reclaim_seconds=30,
            keys=keys,
            heartbeat_seconds=0.2,
            cancel_poll_seconds=0.02,
            grace_seconds=0,
        )
        stop = asyncio.Event()
        worker_task = asyncio.create_task(worker.run(stop))

        async def stop_worker() -> None:
            stop.set()
            await asyncio.wait_for(worker_task, 20)

        stops.append(stop_worker)
    harness = Backend(queue, engine, picture, journal=journal, another_bot=another_bot)
    stream = queue.events()

    async def collect() -> None:
        async for event in stream:
            harness.events.append(event)

    collector = asyncio.create_task(collect())
    yield harness
    await queue.stop(0)
    if harness.queue is not queue:  # a test restarted the bot
        await harness.queue.stop(0)
    for stop_one in stops:
        await stop_one()  # type: ignore[misc]
    await asyncio.wait_for(collector, 5)


async def start(backend: Backend) -> None:
    await backend.queue.start()


async def test_jobs_run_in_fair_order(backend: Backend) -> None:
    for job_id, user in [("a1", 1), ("a2", 1), ("a3", 1), ("b1", 2), ("c1", 3)]:
        await backend.queue.submit(backend.request(job_id, user, steps=2))
    await start(backend)
    await backend.wait_terminal("a3")
    started = [e.job_id for e in backend.events if e.kind is EventKind.STARTED]
    assert started == ["a1", "b1", "c1", "a2", "a3"]
    assert backend.engine.max_concurrent == 1


async def test_progress_then_the_clip_on_the_bots_disk(backend: Backend) -> None:
    await start(backend)
    queued = await backend.queue.submit(backend.request("job1"))
    assert queued.kind is EventKind.QUEUED and queued.position == 1
    done = await backend.wait_terminal("job1")
    assert done.kind is EventKind.DONE
    kinds = backend.kinds("job1")
    assert kinds[0] is EventKind.QUEUED
    assert kinds.index(EventKind.STARTED) < kinds.index(EventKind.STEP)
    order = [kinds.index(k) for k in (EventKind.STEP, EventKind.ENCODING, EventKind.DONE)]
    assert order == sorted(order)
    last_step = [e for e in backend.events if e.job_id == "job1" and e.kind is EventKind.STEP][-1]
    assert (last_step.step, last_step.total) == (STEPS, STEPS)
    assert done.clip is not None and done.clip.path.exists()
    assert done.clip.path.stat().st_size == done.clip.size_bytes > 0
    assert done.clip.frame_count == 4
    assert done.seed == 7
    journaled = [e.kind for e in backend.journal if e.job_id == "job1"]
    assert journaled == [EventKind.STARTED, EventKind.ENCODING, EventKind.DONE]


async def test_cancel_a_waiting_job_never_runs_it(backend: Backend) -> None:
    # Not started: nothing takes jobs yet, so "later" is certainly waiting.
    await backend.queue.submit(backend.request("first"))
    await backend.queue.submit(backend.request("later", user_id=2))
    assert await backend.queue.cancel("later")
    cancelled = await backend.wait_terminal("later")
    assert cancelled.kind is EventKind.CANCELLED and cancelled.reason == "cancelled"
    await start(backend)
    await backend.wait_terminal("first")
    assert backend.engine.runs == 1
    assert EventKind.STARTED not in backend.kinds("later")


async def test_cancel_a_running_job_stops_it_within_a_step(backend: Backend) -> None:
    backend.engine.step_seconds = 0.1
    await start(backend)
    await backend.queue.submit(backend.request("long", steps=40))
    await backend.wait_for(lambda e: e.job_id == "long" and e.kind is EventKind.STEP)
    assert await backend.queue.cancel("long")
    cancelled = await backend.wait_terminal("long")
    assert cancelled.kind is EventKind.CANCELLED
    assert backend.engine.steps_run < 40
    assert [e.kind for e in backend.journal if e.job_id == "long"][-1] is EventKind.CANCELLED


async def test_a_failing_job_fails_alone_with_its_reason(backend: Backend) -> None:
    def fail_short_ones(options: AnimateOptions) -> BaseException | None:
        if options.num_inference_steps == 3:
            return GenerationFailed(OOM, reason="oom")
        return None

    backend.engine.fail_when = fail_short_ones
    await start(backend)
    await backend.queue.submit(backend.request("bad", steps=3))
    await backend.queue.submit(backend.request("good", user_id=2))
    failed = await backend.wait_terminal("bad")
    assert failed.kind is EventKind.FAILED
    assert failed.reason == "oom"
    assert failed.error == OOM
    assert (await backend.wait_terminal("good")).kind is EventKind.DONE


async def test_the_same_id_twice_is_one_job(backend: Backend) -> None:
    await backend.queue.submit(backend.request("twice"))
    again = await backend.queue.submit(backend.request("twice"), resume=True)
    assert again.job_id == "twice"
    await start(backend)
    await backend.wait_terminal("twice")
    await asyncio.sleep(0.3)  # a second run would have started by now
    assert len(backend.terminals("twice")) == 1
    assert backend.engine.runs == 1


async def test_a_clip_finished_while_the_bot_was_down_is_delivered_after_its_restart(
    backend: Backend,
) -> None:
    if backend.another_bot is None:
        pytest.skip("the embedded queue stops its GPU with the bot; covered by the service tests")
    backend.engine.step_seconds = 0.05
    await start(backend)
    await backend.queue.submit(backend.request("across", steps=20))
    await backend.wait_for(lambda e: e.job_id == "across" and e.kind is EventKind.STEP)
    await backend.queue.stop(0)  # the bot restarts; the worker goes on with the clip
    interrupted = await backend.wait_terminal("across")
    assert interrupted.kind is EventKind.INTERRUPTED and interrupted.reason == "shutdown"
    for _ in range(200):  # the worker finishes the clip on its own
        if backend.engine.steps_run >= 20:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # and stores it with its result

    restarted = backend.another_bot()
    backend.queue = restarted
    await restarted.start()
    events = restarted.subscribe("across")
    await restarted.submit(backend.request("across", steps=20), resume=True)
    async with asyncio.timeout(15):
        done = [e async for e in events if e.terminal][-1]
    assert done.kind is EventKind.DONE
    assert done.clip is not None and done.clip.path.exists()
    assert backend.engine.runs == 1  # answered from the stored result, not made again

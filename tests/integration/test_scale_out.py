"""Scale-out for real: a redis-server, two `python -m bot worker` processes on the tiny model, and
the bot's service with `QUEUE_BACKEND=redis`, wired by `build_app` as the host runs it.

Jobs spread over both workers; a worker killed with SIGKILL mid-job leaves its job to the other
(once its claim lapses, not after the long reclaim timeout), and the member gets one clip and one
charge.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from bot.app import App, build_app
from bot.service import Member, Origin
from bot.settings import Settings
from generation.jobs import EventKind, JobEvent
from generation.options import AnimateOptions
from generation.remote.queue import RedisJobQueue
from storage.jobs import JobRecord, JobState
from tests.fakes.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 30
# Far longer than the claim's lease (15 s): a killed worker's job must not wait for it.
RECLAIM = 90
ORIGIN = Origin(channel_id=5, max_bytes=10 * 2**20)

pytestmark = pytest.mark.timeout(240)


@dataclass
class Workers:
    prefix: str
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")


@dataclass
class Recorder:
    delivered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

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
        assert event.clip is not None and event.clip.path.exists()
        self.delivered.append(job.job_id)
        return True

    async def failed(self, job: JobRecord, message: str) -> None:
        self.failures.append(message)

    async def cancelled(self, job: JobRecord) -> None:
        pass

    async def interrupted(self, job: JobRecord, event: JobEvent) -> None:
        pass


def common_env(server: RedisServer, prefix: str, model: Path) -> dict[str, str]:
    return {
        "QUEUE_BACKEND": "redis",
        "REDIS_URL": server.url,
        "REDIS_PREFIX": prefix,
        "REDIS_RECLAIM_SECONDS": str(RECLAIM),
        "JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT),
        "SVD_MODEL": str(model),
        "RESOLUTION": "256",
        "DEVICE": "cpu",
        "HF_OFFLINE": "true",
        "MIN_FREE_DISK_MB": "0",  # whatever the CI machine's disk holds
    }


@pytest.fixture(scope="module")
def workers(
    redis_server: RedisServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    prefix = f"scale{uuid.uuid4().hex[:6]}"
    folder = tmp_path_factory.mktemp("workers")
    processes, logs = {}, {}
    for name in ("w1", "w2"):
        env = {
            **os.environ,
            **common_env(redis_server, prefix, tiny_model_dir),
            "WORKER_NAME": name,
            "DATA_DIR": str(folder / name),
            "SHUTDOWN_GRACE_SECONDS": "0",
            "PYTHONPATH": str(ROOT),
            # One torch thread each: two workers and the test share two cores.
            "OMP_NUM_THREADS": "1",
        }
        logs[name] = folder / f"{name}.log"
        with logs[name].open("wb") as log_file:  # the child keeps its own copy of the handle
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "bot", "worker"],
                env=env,
                cwd=folder,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
    yield Workers(prefix, processes, logs)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def app(
    workers: Workers, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[App]:
    env = common_env(redis_server, workers.prefix, tiny_model_dir)
    settings = Settings(
        **{key.lower(): value for key, value in env.items()},  # type: ignore[arg-type]
        data_dir=tmp_path,
        database_path=tmp_path / "bot.sqlite3",
        default_quota=10,
        max_jobs_per_user=4,
    )
    async with build_app(settings) as built:
        assert isinstance(built.queue, RedisJobQueue)
        await built.queue.start()
        yield built
        await built.queue.stop(0)
        await built.service.close()


async def both_workers_ready(queue: RedisJobQueue, workers: Workers) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = [w for w in queue.workers if w.state == "ready"]
        if len(ready) == 2:
            return
        for name, process in workers.processes.items():
            assert process.poll() is None, f"worker {name} exited:\n{workers.log(name)}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"workers not ready: {queue.workers}")


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 180), (30, 140, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


async def until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_jobs_spread_over_both_workers(app: App, workers: Workers) -> None:
    queue = app.queue
    assert isinstance(queue, RedisJobQueue)
    await both_workers_ready(queue, workers)
    recorder = Recorder()
    pump = asyncio.create_task(app.service.pump(recorder))
    options = AnimateOptions(num_inference_steps=8, num_frames=4)
    ids = []
    for user in (1, 2):
        accepted = await app.service.submit(Member(1, user), picture(), options, ORIGIN)
        ids.append(accepted.job.job_id)
    await until(lambda: len(recorder.delivered) == 2, 120)
    assert sorted(recorder.delivered) == sorted(ids)
    assert recorder.failures == []
    ran_on = {
        job_id: [name for name in ("w1", "w2") if f"[job {job_id}] done" in workers.log(name)]
        for job_id in ids
    }
    assert sorted(name for names in ran_on.values() for name in names) == ["w1", "w2"], ran_on
    pump.cancel()


async def test_check_sees_redis_and_both_workers(app: App, workers: Workers) -> None:
    from bot.doctor import _queue_backend

    queue = app.queue
    assert isinstance(queue, RedisJobQueue)
    await both_workers_ready(queue, workers)
    finding = await asyncio.to_thread(_queue_backend, app.settings)
    assert finding.ok, finding.detail
    assert "2 GPU worker(s) connected" in finding.detail
    # The workers told the bot how many frames the model makes (the tiny one: 4), for the ETA.
    await until(lambda: queue.frames_for(None) == 4, 10)


async def test_a_killed_workers_job_finishes_on_the_other_once(app: App, workers: Workers) -> None:
    queue = app.queue
    assert isinstance(queue, RedisJobQueue)
    await both_workers_ready(queue, workers)
    recorder = Recorder()
    pump = asyncio.create_task(app.service.pump(recorder))
    member = Member(1, 7)
    options = AnimateOptions(num_inference_steps=20, num_frames=4)
    accepted = await app.service.submit(member, picture(), options, ORIGIN)
    job_id = accepted.job.job_id
    async with queue.subscribe(job_id) as events:
        async for event in events:
            if event.kind is EventKind.STEP and (event.step or 0) >= 2:
                break
    await until(lambda: any(w.job_id == job_id for w in queue.workers), 5)
    busy = [w.name for w in queue.workers if w.job_id == job_id]
    assert len(busy) == 1, queue.workers
    victim, survivor = busy[0], ({"w1", "w2"} - {busy[0]}).pop()
    workers.processes[victim].send_signal(signal.SIGKILL)
    workers.processes[victim].wait(10)

    # Long before the reclaim timeout: the bot sees the claim lapse and hands the job on.
    await until(lambda: recorder.delivered, RECLAIM - 30)
    await asyncio.sleep(2)  # a second delivery, if there were one, would come now
    assert recorder.delivered == [job_id]
    assert recorder.failures == []
    assert f"[job {job_id}] done" in workers.log(survivor)
    record = await app.service.job(job_id)
    assert record is not None and record.state is JobState.DELIVERED
    assert record.attempts == 2  # started on the victim, then on the survivor
    quota = await app.service.quota(member)
    assert quota.used == 1
    pump.cancel()

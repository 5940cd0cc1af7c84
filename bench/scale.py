"""Scale-out: jobs per minute with N GPU workers behind Redis, and what the Redis path adds.

Starts a private `redis-server` on 127.0.0.1 (Debian's package), the bot's `RedisJobQueue`, and
N `RemoteWorker`s in this process, each with its own fake engine that sleeps through its steps
in its own thread, as a GPU keeps a worker busy without using the CPU, and a fake encoder that
sleeps `--encode-seconds` in the encoder's thread (the CPU's part of a clip). Measures:

1. throughput: `--jobs-per-worker` × N jobs from many members submitted at once; jobs per minute
   from the first submit to the last clip, against the ideal N × one worker's rate measured on
   the embedded queue with the same engine;
2. latency: one job at a time on an idle queue, submit → clip on the bot's disk, through the
   embedded queue and through Redis with one worker; the difference is what the Redis path adds
   (the taskiq message, the picture and the clip through Redis, pub/sub progress).

    python -m bench.scale [--workers 1 2 4] [--step-seconds 0.05] [--steps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from PIL import Image

from generation.fake_engine import FakeEncoder, FakeEngine
from generation.jobs import EventKind, JobQueue, JobRequest
from generation.options import AnimateOptions
from generation.queue import FairQueue
from generation.remote.queue import RedisJobQueue
from generation.remote.wire import Keys
from generation.remote.worker import RemoteWorker
from generation.worker import LocalJobQueue
from tests.fakes.redis_server import RedisServer


def engine(args: argparse.Namespace) -> FakeEngine:
    return FakeEngine(step_seconds=args.step_seconds, frames=4)


@asynccontextmanager
async def local_queue(args: argparse.Namespace, folder: Path) -> AsyncIterator[JobQueue]:
    queue = LocalJobQueue(
        engine(args),
        output_dir=folder / "out",
        queue=FairQueue(max_per_user=100, max_waiting=10_000),
        encoder=FakeEncoder(seconds=args.encode_seconds),
    )
    await queue.start()
    await queue.loaded()
    try:
        yield queue
    finally:
        await queue.stop(0)


@asynccontextmanager
async def redis_queue(
    args: argparse.Namespace, folder: Path, url: str, workers: int
) -> AsyncIterator[JobQueue]:
    keys = Keys(f"bench{uuid.uuid4().hex[:6]}")
    queue = RedisJobQueue(
        redis_url=url,
        output_dir=folder / "out",
        reclaim_seconds=60,
        keys=keys,
        queue=FairQueue(max_per_user=100, max_waiting=10_000),
        tick_seconds=0.2,
    )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            RemoteWorker(
                LocalJobQueue(
                    engine(args),
                    output_dir=folder / f"w{i}",
                    encoder=FakeEncoder(seconds=args.encode_seconds),
                ),
                redis_url=url,
                work_dir=folder / f"w{i}-in",
                reclaim_seconds=60,
                keys=keys,
                name=f"w{i}",
                heartbeat_seconds=0.5,
                grace_seconds=0,
            ).run(stop)
        )
        for i in range(workers)
    ]
    await queue.start()
    deadline = time.monotonic() + 30
    while len(queue.workers) < workers and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # heartbeats land in Redis; polling is what the bot does too
    try:
        yield queue
    finally:
        await queue.stop(0)
        stop.set()
        await asyncio.gather(*tasks)


async def run_jobs(queue: JobQueue, picture: Path, args: argparse.Namespace, count: int) -> float:
    """Submit `count` jobs from `count` members at once; seconds until the last is done."""
    options = AnimateOptions(num_inference_steps=args.steps, seed=1)
    started = time.perf_counter()
    subscriptions = []
    for i in range(count):
        job_id = uuid.uuid4().hex
        subscriptions.append(queue.subscribe(job_id))
        await queue.submit(JobRequest(job_id, i + 1, options, picture, max_bytes=10**8))
    for subscription in subscriptions:
        async for event in subscription:
            if event.terminal:
                assert event.kind is EventKind.DONE, event
    return time.perf_counter() - started


async def latencies(queue: JobQueue, picture: Path, args: argparse.Namespace) -> list[float]:
    return [await run_jobs(queue, picture, args, 1) for _ in range(args.latency_jobs)]


async def main(args: argparse.Namespace) -> None:
    if shutil.which("redis-server") is None:
        sys.exit("bench.scale needs redis-server (apt-get install redis-server)")
    folder = Path(tempfile.mkdtemp(prefix="svd-scale-"))
    picture = folder / "picture.png"
    Image.new("RGB", (256, 144), (30, 140, 90)).save(picture)
    server = RedisServer(folder / "redis")
    try:
        job_seconds = args.steps * args.step_seconds
        print(
            f"fake job: {args.steps} steps x {args.step_seconds * 1000:.0f} ms = {job_seconds}s"
            f" on the GPU, then {args.encode_seconds}s encoding"
        )
        async with local_queue(args, folder / "local") as queue:
            await run_jobs(queue, picture, args, 2)  # warm-up
            local_seconds = await run_jobs(queue, picture, args, args.jobs_per_worker)
            local_latency = await latencies(queue, picture, args)
        one_gpu = args.jobs_per_worker / local_seconds * 60
        print(f"\nembedded queue, 1 GPU: {one_gpu:.1f} jobs/min\n")
        print("| workers | jobs | seconds | jobs/min | ideal (N x embedded) | of ideal |")
        print("|---|---|---|---|---|---|")
        redis_latency: list[float] = []
        for n in args.workers:
            async with redis_queue(args, folder / f"redis{n}", server.url, n) as queue:
                await run_jobs(queue, picture, args, n)  # warm-up
                count = args.jobs_per_worker * n
                seconds = await run_jobs(queue, picture, args, count)
                if n == 1:
                    redis_latency = await latencies(queue, picture, args)
            rate = count / seconds * 60
            ideal = one_gpu * n
            share = rate / ideal
            print(f"| {n} | {count} | {seconds:.2f} | {rate:.1f} | {ideal:.1f} | {share:.0%} |")
        if redis_latency:
            local_ms = statistics.median(local_latency) * 1000
            redis_ms = statistics.median(redis_latency) * 1000
            print(f"\nsubmit → clip, one job on an idle queue (median of {args.latency_jobs}):")
            print(f"  embedded: {local_ms:.1f} ms   redis: {redis_ms:.1f} ms")
            print(f"  added by the Redis path: {redis_ms - local_ms:.1f} ms per job")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs-per-worker", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    # A GIF of SVD-XT's 25 frames takes about 2 s of CPU against 5-10 s of GPU.
    parser.add_argument("--encode-seconds", type=float, default=0.2)
    parser.add_argument("--latency-jobs", type=int, default=20)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

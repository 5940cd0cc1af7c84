"""What the queue itself adds to each job, with the fake engine (no model, no GPU).

Two latencies per job, measured with one clock across threads (time.perf_counter):
- submit → worker start: from calling `submit()` to the engine's `run()` beginning in its thread
  (queue, fair pick, the "started" journal write, the hop to the engine thread);
- done → event delivered: from the encoder returning in its thread to a subscriber of `events()`
  receiving the `done` event (the hop back, the "done" journal write, the event bus).

Jobs are submitted one after another onto an idle queue, so no job waits behind another: what is
left is pure overhead. A no-op async journal stands in for the database write (the real one's cost
is storage's benchmark). Target: under 5 ms median for each.

    python -m bench.queue_overhead [--jobs 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from generation.fake_engine import FakeEncoder, FakeEngine
from generation.jobs import EventKind, JobEvent, JobRequest
from generation.options import AnimateOptions, OutputFormat
from generation.queue import FairQueue
from generation.results import EncodedClip, GenerationResult, OnStep, ShouldCancel
from generation.worker import LocalJobQueue

TARGET_MS = 5.0


@dataclass
class TimedEngine(FakeEngine):
    run_started: dict[int, float] = field(default_factory=dict)

    def run(
        self,
        image: Image.Image,
        options: AnimateOptions,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> GenerationResult:
        self.run_started[options.seed or 0] = time.perf_counter()
        return super().run(image, options, on_step, should_cancel)


@dataclass
class TimedEncoder(FakeEncoder):
    finished: dict[str, float] = field(default_factory=dict)

    def __call__(
        self,
        frames: np.ndarray,
        path: Path,
        *,
        format: OutputFormat,
        fps: float,
        max_bytes: int,
        interpolate: bool = False,
        ping_pong: bool = False,
    ) -> EncodedClip:
        clip = super().__call__(
            frames,
            path,
            format=format,
            fps=fps,
            max_bytes=max_bytes,
            interpolate=interpolate,
            ping_pong=ping_pong,
        )
        self.finished[path.stem] = time.perf_counter()
        return clip


def summary(name: str, values_ms: list[float]) -> str:
    values = sorted(values_ms)
    p95 = values[int(0.95 * (len(values) - 1))]
    median = statistics.median(values)
    verdict = "PASS" if median < TARGET_MS else "FAIL"
    return (
        f"{name:28s} median {median:6.3f} ms   p95 {p95:6.3f} ms   max {values[-1]:6.3f} ms"
        f"   [{verdict}: target < {TARGET_MS} ms median]"
    )


async def measure(jobs: int, steps: int, workdir: Path) -> tuple[list[float], list[float], float]:
    image_path = workdir / "input.png"
    Image.new("RGB", (64, 32), (90, 120, 200)).save(image_path)
    engine = TimedEngine(step_seconds=0.0, frames=4)
    encoder = TimedEncoder()

    async def journal(event: JobEvent) -> None:
        await asyncio.sleep(0)  # an awaited write that costs nothing

    runtime = LocalJobQueue(
        engine,
        output_dir=workdir / "outputs",
        queue=FairQueue(max_per_user=2, max_waiting=50),
        encoder=encoder,
        journal=journal,
    )
    stream = runtime.events()
    await runtime.start()
    await runtime.loaded()
    start_ms: list[float] = []
    deliver_ms: list[float] = []
    began = time.perf_counter()
    for i in range(jobs):
        options = AnimateOptions(num_inference_steps=steps, seed=i, num_frames=4)
        request = JobRequest(f"job{i}", i % 7, options, image_path, max_bytes=1 << 20)
        submitted = time.perf_counter()
        await runtime.submit(request)
        async for event in stream:
            if event.job_id == request.job_id and event.kind is EventKind.DONE:
                delivered = time.perf_counter()
                break
        start_ms.append((engine.run_started[i] - submitted) * 1000)
        deliver_ms.append((delivered - encoder.finished[request.job_id]) * 1000)
    elapsed = time.perf_counter() - began
    await runtime.stop(1)
    return start_ms, deliver_ms, jobs / elapsed


async def measure_full_queue(rounds: int, workdir: Path) -> tuple[list[float], list[float]]:
    """submit() and cancel() of one job while 49 others wait (positions and ETAs recomputed)."""
    image_path = workdir / "input.png"
    Image.new("RGB", (64, 32)).save(image_path)
    runtime = LocalJobQueue(
        FakeEngine(),
        output_dir=workdir / "outputs",
        queue=FairQueue(max_per_user=50, max_waiting=50),
        encoder=FakeEncoder(),
    )
    stream = runtime.events()  # a subscriber, so events are really delivered
    for i in range(49):
        request = JobRequest(f"w{i}", i % 10, AnimateOptions(), image_path, max_bytes=1 << 20)
        await runtime.submit(request)
    submit_ms: list[float] = []
    cancel_ms: list[float] = []
    for i in range(rounds):
        # A new member's job lands mid-queue, so the jobs behind it move.
        request = JobRequest(f"x{i}", 1000 + i, AnimateOptions(), image_path, max_bytes=1 << 20)
        began = time.perf_counter()
        await runtime.submit(request)
        submit_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await runtime.cancel(request.job_id)
        cancel_ms.append((time.perf_counter() - began) * 1000)
        while stream.pending:
            await anext(stream)
    await runtime.stop(0)
    return submit_ms, cancel_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=1, help="fake denoising steps per job")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # A warm-up round so imports and first-call costs are not counted.
        asyncio.run(measure(20, args.steps, Path(tmp)))
    with tempfile.TemporaryDirectory() as tmp:
        start_ms, deliver_ms, rate = asyncio.run(measure(args.jobs, args.steps, Path(tmp)))
    print(f"{args.jobs} jobs, fake engine ({args.steps} step(s) of 0 s), one at a time")
    print(summary("submit -> worker start", start_ms))
    print(summary("done -> event delivered", deliver_ms))
    print(f"{'round trip throughput':28s} {rate:8.1f} jobs/s (whole job, fake work included)")
    with tempfile.TemporaryDirectory() as tmp:
        submit_full, cancel_full = asyncio.run(measure_full_queue(200, Path(tmp)))
    print("with 49 jobs waiting (a full queue):")
    print(summary("submit (jumps the line)", submit_full))
    print(summary("cancel a waiting job", cancel_full))
    ok = statistics.median(start_ms) < TARGET_MS and statistics.median(deliver_ms) < TARGET_MS
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

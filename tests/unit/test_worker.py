"""The GPU worker and its runtime, with the fake engine (milliseconds per step)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from generation.errors import GenerationFailed, GPUUnusable, InvalidOptions, TooManyJobs
from generation.eta import EtaEstimator
from generation.fake_engine import FakeEncoder, FakeEngine
from generation.jobs import EventKind, JobEvent, JobQueue, JobRequest
from generation.metrics import Metrics
from generation.options import AnimateOptions
from generation.queue import FairQueue, QueueClosed
from generation.results import GenerationResult, OnStep, Progress, ShouldCancel
from generation.worker import (
    DEFAULT_FRAMES,
    GENERIC_ERROR,
    LocalJobQueue,
    available_cpus,
    cgroup_cpu_quota,
    encoders_for,
)

FRAMES = 6


@dataclass
class LoadsAModel(FakeEngine):
    """Loads (and compiles) another model for each clip, for `load_for_clip` seconds, before
    its first step."""

    load_for_clip: float = 0.5

    def run(
        self, image: Image.Image, options: AnimateOptions, on_step: OnStep, cancel: ShouldCancel
    ) -> GenerationResult:
        on_step(Progress("loading"))
        time.sleep(self.load_for_clip)
        return super().run(image, options, on_step, cancel)


@dataclass
class Harness:
    runtime: LocalJobQueue
    engine: FakeEngine
    encoder: FakeEncoder
    input_path: Path
    output_dir: Path
    events: list[JobEvent] = field(default_factory=list)
    journal: list[JobEvent] = field(default_factory=list)

    def request(
        self, job_id: str, user_id: int = 1, *, steps: int = 4, seed: int = 1, **options: object
    ) -> JobRequest:
        opts = AnimateOptions(num_inference_steps=steps, seed=seed, **options)  # type: ignore[arg-type]
        return JobRequest(job_id, user_id, opts, self.input_path, max_bytes=10_000_000)

    def kinds(self, job_id: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.job_id == job_id]

    def terminal(self) -> list[JobEvent]:
        return [e for e in self.events if e.terminal]

    async def wait_for(self, predicate: Callable[[JobEvent], bool]) -> JobEvent:
        """The first collected event matching `predicate`, waiting up to 5 s for it."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.002)
        raise AssertionError(f"no such event; got {[(e.job_id, e.kind) for e in self.events]}")

    async def wait_terminal(self, job_id: str) -> JobEvent:
        return await self.wait_for(lambda e: e.job_id == job_id and e.terminal)

    async def settle(self) -> None:
        """Let the event collector catch up with what was published."""
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture
def input_path(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    Image.new("RGB", (32, 16), (200, 100, 50)).save(path)
    return path


@pytest.fixture
async def make(tmp_path: Path, input_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []
    tasks: list[asyncio.Task[None]] = []

    def factory(
        *,
        engine: FakeEngine | None = None,
        encoder: FakeEncoder | None = None,
        queue: FairQueue | None = None,
        journal_delay: float = 0.0,
        **kwargs: object,
    ) -> Harness:
        engine = engine or FakeEngine(step_seconds=0.001, frames=FRAMES)
        encoder = encoder or FakeEncoder()
        holder: list[Harness] = []

        async def journal(event: JobEvent) -> None:
            if journal_delay:
                await asyncio.sleep(journal_delay)
            holder[0].journal.append(event)

        runtime = LocalJobQueue(
            engine,
            output_dir=tmp_path / "outputs",
            queue=queue if queue is not None else FairQueue(max_per_user=10),
            encoder=encoder,
            journal=journal,
            **kwargs,  # type: ignore[arg-type]
        )
        harness = Harness(runtime, engine, encoder, input_path, tmp_path / "outputs")
        holder.append(harness)

        stream = runtime.events()  # subscribed now: nothing published from here on is missed

        async def collect() -> None:
            async for event in stream:
                harness.events.append(event)

        tasks.append(asyncio.create_task(collect()))
        harnesses.append(harness)
        return harness

    yield factory
    for harness in harnesses:
        await harness.runtime.stop(0)
    for task in tasks:
        await asyncio.wait_for(task, 5)


async def test_local_queue_satisfies_the_job_queue_interface(make: Callable[..., Harness]) -> None:
    runtime: JobQueue = make().runtime
    assert runtime is not None


async def test_jobs_run_in_fair_order_one_at_a_time_in_the_engine_thread(
    make: Callable[..., Harness],
) -> None:
    h = make()
    for job_id, user in [("A1", 1), ("A2", 1), ("A3", 1), ("B1", 2), ("C1", 3)]:
        await h.runtime.submit(h.request(job_id, user))
    await h.runtime.start()
    await h.wait_terminal("A3")

    assert [e.job_id for e in h.terminal()] == ["A1", "B1", "C1", "A2", "A3"]
    assert all(e.kind is EventKind.DONE for e in h.terminal())
    assert h.engine.max_concurrent == 1
    assert len(h.engine.threads) == 1
    assert next(iter(h.engine.threads)).startswith("svd-engine")
    assert threading.current_thread().name not in h.engine.threads


async def test_events_of_a_job_arrive_in_order_with_the_finished_clip(
    make: Callable[..., Harness],
) -> None:
    h = make()
    queued = await h.runtime.submit(h.request("J1", steps=3, seed=42))
    assert (queued.kind, queued.position) == (EventKind.QUEUED, 1)
    async with h.runtime.subscribe("J1") as subscription:
        await h.runtime.start()
        seen = [event async for event in subscription]

    kinds = [e.kind for e in seen]
    # Subscribing replays the latest event (queued); the steps may be coalesced, never reordered.
    assert kinds[:2] == [EventKind.QUEUED, EventKind.STARTED]
    assert kinds[-3:] == [EventKind.DECODING, EventKind.ENCODING, EventKind.DONE]
    steps = [e.step or 0 for e in seen if e.kind is EventKind.STEP]
    assert steps == sorted(steps) and steps[-1] == 3
    done = seen[-1]
    assert done.clip is not None
    assert done.clip.path == h.output_dir / "J1.mp4"
    assert done.clip.path.exists()
    assert done.clip.frame_count == FRAMES
    assert (done.clip.width, done.clip.height) == (32, 16)
    assert done.seed == 42
    assert done.plan == "fake"
    assert done.cost_units == FRAMES * 3
    assert done.seconds is not None and done.seconds > 0
    await h.wait_terminal("J1")
    assert [k for k in h.kinds("J1") if k is not EventKind.STEP] == [
        EventKind.QUEUED,
        EventKind.STARTED,
        EventKind.DECODING,
        EventKind.ENCODING,
        EventKind.DONE,
    ]


async def test_warm_up_loads_the_model_in_the_engine_thread_before_the_first_job(
    make: Callable[..., Harness],
) -> None:
    h = make(engine=FakeEngine(step_seconds=0.001, frames=FRAMES, load_seconds=0.05))
    assert h.runtime.state == "starting"
    await h.runtime.submit(h.request("J1"))
    await h.runtime.start()
    assert h.runtime.state == "loading"
    await asyncio.wait_for(h.runtime.loaded(), 2)
    assert h.runtime.state == "ready"
    assert h.engine.loads == 1
    await h.wait_terminal("J1")
    assert h.engine.loads == 1


async def test_a_failed_load_is_reported_and_jobs_still_get_an_answer(
    make: Callable[..., Harness],
) -> None:
    class BrokenLoad(FakeEngine):
        def load(self) -> None:
            raise OSError("weights missing")

        def run(
            self, image: Image.Image, options: AnimateOptions, on_step: OnStep, cancel: ShouldCancel
        ) -> GenerationResult:
            self.load()  # as the real engine does, for a model not loaded yet
            return super().run(image, options, on_step, cancel)

    h = make(engine=BrokenLoad(step_seconds=0.001, frames=FRAMES))
    await h.runtime.start()
    # A benchmark or script waiting for the model hears why, rather than waiting for ever.
    with pytest.raises(OSError, match="weights missing"):
        await asyncio.wait_for(h.runtime.loaded(), 5)
    await h.runtime.submit(h.request("J1"))
    await h.wait_terminal("J1")
    assert h.runtime.state == "load_failed"
    assert isinstance(h.runtime.load_error, OSError)
    assert not h.runtime.ready.is_set()


async def test_a_load_that_fails_at_start_and_works_later_makes_the_bot_ready(
    make: Callable[..., Harness],
) -> None:
    class PassingTrouble(FakeEngine):
        def load(self) -> None:
            raise GenerationFailed("The video model could not be loaded.", reason="load")

    h = make(engine=PassingTrouble(step_seconds=0.001, frames=FRAMES))
    await h.runtime.submit(h.request("other", model="another-model"))
    await h.runtime.start()  # the load at start fails (always), then the clip runs
    assert (await h.wait_terminal("other")).kind is EventKind.DONE
    assert h.runtime.state == "load_failed"  # a clip on another model says nothing of it
    await h.runtime.submit(h.request("J1"))
    assert (await h.wait_terminal("J1")).kind is EventKind.DONE  # the clip loaded it
    assert h.runtime.state == "ready" and h.runtime.ready.is_set()
    assert h.runtime.load_error is None


async def test_positions_and_etas_update_as_the_queue_moves(
    make: Callable[..., Harness],
) -> None:
    h = make(eta=EtaEstimator(default_seconds_per_unit=0.01))
    first = await h.runtime.submit(h.request("A1", 1, steps=10))
    second = await h.runtime.submit(h.request("B1", 2, steps=10))
    third = await h.runtime.submit(h.request("C1", 3, steps=10))
    assert [e.position for e in (first, second, third)] == [1, 2, 3]
    cost = FRAMES * 10
    assert first.eta_seconds == 0
    assert second.eta_seconds == pytest.approx(cost * 0.01)
    assert third.eta_seconds == pytest.approx(2 * cost * 0.01)

    snapshot = h.runtime.snapshot()
    assert [(w.job_id, w.position) for w in snapshot.waiting] == [("A1", 1), ("B1", 2), ("C1", 3)]

    await h.runtime.start()
    await h.wait_terminal("C1")
    c_positions = [e.position for e in h.events if e.job_id == "C1" and e.position is not None]
    assert c_positions == [3, 2, 1]
    b_positions = [e.position for e in h.events if e.job_id == "B1" and e.position is not None]
    assert b_positions == [2, 1]
    # Next in line once A1 has started: its wait is A1's clip, not nothing.
    b_next = next(e for e in h.events if e.job_id == "B1" and e.position == 1)
    assert b_next.eta_seconds == pytest.approx(cost * 0.01, abs=0.1)


async def test_a_model_load_before_the_first_step_does_not_stretch_the_estimate(
    make: Callable[..., Harness],
) -> None:
    h = make(engine=LoadsAModel(load_for_clip=0.5, step_seconds=0.02, frames=FRAMES))
    await h.runtime.start()
    await h.runtime.submit(h.request("J1", steps=10))
    await h.wait_terminal("J1")
    steps = {e.step: e.eta_seconds for e in h.events if e.kind is EventKind.STEP}
    assert steps[5] == pytest.approx(5 * 0.02, abs=0.08)  # the load would make it 0.6 s


async def test_a_newcomer_moves_ahead_of_a_members_second_job(
    make: Callable[..., Harness],
) -> None:
    h = make()
    await h.runtime.submit(h.request("A1", 1))
    await h.runtime.submit(h.request("A2", 1))
    await h.runtime.submit(h.request("B1", 2))
    await h.settle()
    positions = {w.job_id: w.position for w in h.runtime.snapshot().waiting}
    assert positions == {"A1": 1, "B1": 2, "A2": 3}
    moved = [e for e in h.events if e.kind is EventKind.POSITION]
    assert [(e.job_id, e.position) for e in moved] == [("A2", 3)]


async def test_eta_after_a_few_jobs_uses_the_median_duration(
    make: Callable[..., Harness],
) -> None:
    h = make(engine=FakeEngine(step_seconds=0.005, frames=FRAMES))
    await h.runtime.start()
    for i in range(3):
        await h.runtime.submit(h.request(f"J{i}", i, steps=4))
        await h.wait_terminal(f"J{i}")
    done = [e for e in h.events if e.kind is EventKind.DONE]
    rates = sorted(e.seconds / e.cost_units for e in done)  # type: ignore[operator]
    assert h.runtime.eta.seconds_per_unit() == pytest.approx(rates[1])

    # With nothing running, a job's wait is the estimate of those ahead of it.
    await h.runtime.stop(1)
    h2 = make(eta=h.runtime.eta)
    await h2.runtime.submit(h2.request("K1", 1, steps=10))
    queued = await h2.runtime.submit(h2.request("K2", 2, steps=10))
    assert queued.eta_seconds == pytest.approx(FRAMES * 10 * rates[1])


async def test_eta_history_can_be_seeded_from_the_database(make: Callable[..., Harness]) -> None:
    eta = EtaEstimator()
    eta.seed([(100, 5.0), (100, 7.0), (100, 100.0)])
    h = make(eta=eta)
    await h.runtime.submit(h.request("K1", 1, steps=10))
    queued = await h.runtime.submit(h.request("K2", 2, steps=10))
    assert queued.eta_seconds == pytest.approx(FRAMES * 10 * 0.07)


async def test_cancel_a_waiting_job_removes_it_at_once(make: Callable[..., Harness]) -> None:
    h = make()
    await h.runtime.submit(h.request("A1", 1))
    await h.runtime.submit(h.request("B1", 2))
    await h.runtime.submit(h.request("C1", 3))
    assert await h.runtime.cancel("B1")
    await h.settle()
    assert h.events[-2].kind is EventKind.CANCELLED and h.events[-2].job_id == "B1"
    assert h.events[-1].kind is EventKind.POSITION and h.events[-1].position == 2
    assert [w.job_id for w in h.runtime.snapshot().waiting] == ["A1", "C1"]
    assert [e.kind for e in h.journal] == [EventKind.CANCELLED]
    assert not await h.runtime.cancel("B1")
    assert not await h.runtime.cancel("nope")

    await h.runtime.start()
    await h.wait_terminal("C1")
    assert h.engine.runs == 2
    # The cancelled job freed its member's slot.
    assert h.runtime.snapshot().waiting == ()


async def test_cancel_a_running_job_stops_it_within_one_step_and_frees_the_gpu(
    make: Callable[..., Harness],
) -> None:
    step = 0.02
    h = make(engine=FakeEngine(step_seconds=step, frames=FRAMES))
    await h.runtime.start()
    await h.runtime.submit(h.request("A1", 1, steps=50))
    await h.runtime.submit(h.request("B1", 2, steps=2))
    await h.wait_for(lambda e: e.job_id == "A1" and e.kind is EventKind.STEP and (e.step or 0) >= 3)
    asked = time.monotonic()
    assert await h.runtime.cancel("A1")
    cancelled = await h.wait_terminal("A1")
    took = time.monotonic() - asked

    assert cancelled.kind is EventKind.CANCELLED
    assert cancelled.reason == "cancelled"
    assert took < step * 2 + 0.1
    assert h.engine.steps_after_cancel <= 1
    assert h.engine.steps_run < 50
    assert not (h.output_dir / "A1.mp4").exists()
    assert (await h.wait_terminal("B1")).kind is EventKind.DONE


async def test_a_failing_job_does_not_stop_the_queue(
    make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    def fail(options: AnimateOptions) -> BaseException | None:
        if options.seed == 13:
            return RuntimeError("CUDA error: an illegal memory access at 0xdeadbeef")
        if options.seed == 14:
            return GenerationFailed(
                "The GPU is out of memory even at the smallest plan.", reason="oom"
            )
        if options.seed == 15:
            return InvalidOptions("num_frames", "`num_frames` must be at most 25 for this model.")
        return None

    h = make(engine=FakeEngine(step_seconds=0.001, frames=FRAMES, fail_when=fail))
    caplog.set_level(logging.INFO, logger="generation.worker")
    await h.runtime.start()
    for job_id, seed in [("bad", 13), ("oom", 14), ("invalid", 15), ("good", 1)]:
        await h.runtime.submit(h.request(job_id, seed, seed=seed))
    good = await h.wait_terminal("good")

    bad, oom, invalid = [await h.wait_terminal(j) for j in ("bad", "oom", "invalid")]
    assert (bad.kind, bad.reason, bad.error) == (EventKind.FAILED, "error", GENERIC_ERROR)
    assert "0xdeadbeef" not in (bad.error or "")
    assert (oom.reason, oom.error) == ("oom", "The GPU is out of memory even at the smallest plan.")
    assert invalid.reason == "invalid" and "num_frames" in (invalid.error or "")
    assert good.kind is EventKind.DONE
    # The full traceback is in the log, with the job id.
    records = [r for r in caplog.records if getattr(r, "job_id", None) == "bad"]
    failure = [r for r in records if r.exc_info]
    assert failure and "0xdeadbeef" in str(failure[0].exc_info[1])  # type: ignore[index]
    assert all(r.getMessage().startswith("[job bad]") for r in records)


async def test_a_missing_input_file_fails_the_job_with_a_clear_reason(
    make: Callable[..., Harness],
) -> None:
    h = make()
    await h.runtime.start()
    request = h.request("lost")
    await h.runtime.submit(
        JobRequest("lost", 1, request.options, h.input_path.with_name("gone.png"), 1000)
    )
    await h.runtime.submit(h.request("next", 2))
    lost = await h.wait_terminal("lost")
    assert (lost.kind, lost.reason) == (EventKind.FAILED, "input")
    assert "upload it again" in (lost.error or "")
    assert (await h.wait_terminal("next")).kind is EventKind.DONE


async def test_a_reload_in_the_middle_of_a_clip_does_not_stretch_the_waits_behind_it(
    make: Callable[..., Harness],
) -> None:
    class SteppingDown(FakeEngine):
        def run(
            self, image: Image.Image, options: AnimateOptions, on_step: OnStep, cancel: ShouldCancel
        ) -> GenerationResult:
            for step in range(1, 6):
                time.sleep(0.02)
                on_step(Progress("denoising", step, 10))
            on_step(Progress("loading"))  # out of memory: reloaded under a smaller plan
            time.sleep(2.0)
            return super().run(image, options, on_step, cancel)

    h = make(
        engine=SteppingDown(step_seconds=0.001, frames=FRAMES),
        eta=EtaEstimator(default_seconds_per_unit=0.01),
    )
    await h.runtime.start()
    await h.runtime.submit(h.request("A", 1, steps=10))
    await h.runtime.submit(h.request("B", 2, steps=10))
    await h.wait_for(lambda e: e.job_id == "A" and e.kind is EventKind.LOADING)
    await asyncio.sleep(1.2)
    waiting = h.runtime.snapshot().waiting
    # A's own estimate (60 units at 0.01 s), not its time so far over the steps before the reload.
    assert waiting[0].eta_seconds == pytest.approx(FRAMES * 10 * 0.01, abs=0.2)
    await h.wait_terminal("B")


async def test_loading_a_model_for_a_clip_does_not_count_against_its_time_limit(
    make: Callable[..., Harness],
) -> None:
    h = make(
        engine=LoadsAModel(load_for_clip=0.6, step_seconds=0.01, frames=FRAMES), job_timeout=0.4
    )
    await h.runtime.start()
    await h.runtime.submit(h.request("other-model", steps=5))
    assert (await h.wait_terminal("other-model")).kind is EventKind.DONE


async def test_a_job_over_its_time_limit_fails_and_the_next_one_runs(
    make: Callable[..., Harness],
) -> None:
    step = 0.02
    h = make(engine=FakeEngine(step_seconds=step, frames=FRAMES), job_timeout=0.15)
    await h.runtime.start()
    await h.runtime.ready.wait()
    await h.runtime.submit(h.request("slow", 1, steps=50))
    await h.runtime.submit(h.request("next", 2, steps=2))
    started = time.monotonic()
    failed = await h.wait_terminal("slow")
    assert time.monotonic() - started < 0.15 + 0.2
    assert (failed.kind, failed.reason) == (EventKind.FAILED, "timeout")
    assert "limit" in (failed.error or "")
    assert (await h.wait_terminal("next")).kind is EventKind.DONE
    # The engine thread stopped at its next step; the next job did not overlap it.
    assert h.engine.steps_run < 50
    assert h.engine.steps_after_cancel <= 1
    assert h.engine.max_concurrent == 1
    # No event for the timed-out job after its failure.
    assert h.kinds("slow")[-1] is EventKind.FAILED


class Hangs(FakeEngine):
    """Seed 99 blocks until `release` is set, ignoring cancel, like a wedged driver call."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()

    def run(
        self,
        image: Image.Image,
        options: AnimateOptions,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> GenerationResult:
        if options.seed == 99:
            self.release.wait(5)
        return super().run(image, options, on_step, should_cancel)


async def test_a_hung_engine_holds_the_gpu_until_it_returns(
    make: Callable[..., Harness],
) -> None:
    engine = Hangs(step_seconds=0.001, frames=FRAMES)
    release = engine.release
    h = make(engine=engine, job_timeout=0.05)
    await h.runtime.start()
    await h.runtime.submit(h.request("hung", 1, seed=99))
    await h.runtime.submit(h.request("next", 2))
    assert (await h.wait_terminal("hung")).reason == "timeout"
    await asyncio.sleep(0.05)
    snapshot = h.runtime.snapshot()
    assert snapshot.stuck_job_id == "hung"
    assert [w.job_id for w in snapshot.waiting] == ["next"]
    release.set()
    assert (await h.wait_terminal("next")).kind is EventKind.DONE
    assert h.runtime.snapshot().stuck_job_id is None


class SlowToCount(FakeEngine):
    """An engine that must wait (for a clip, a load, a config download) to count frames."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()

    def known_frames(self, model: str | None) -> int | None:
        return None

    def frames_for(self, model: str | None) -> int:
        self.release.wait(5)
        return super().frames_for(model)


async def test_the_event_loop_never_waits_for_the_engine_to_count_frames(
    make: Callable[..., Harness],
) -> None:
    engine = SlowToCount(step_seconds=0.001, frames=FRAMES)
    h = make(engine=engine)
    started = time.monotonic()
    assert h.runtime.frames_for("other") == DEFAULT_FRAMES  # the usual count, at once
    assert time.monotonic() - started < 0.5
    engine.release.set()
    for _ in range(500):  # learnt in a thread, then kept
        if h.runtime.frames_for("other") == FRAMES:
            break
        await asyncio.sleep(0.01)
    assert h.runtime.frames_for("other") == FRAMES


async def test_an_engine_that_never_returns_asks_the_host_for_a_restart(
    make: Callable[..., Harness],
) -> None:
    engine = Hangs(step_seconds=0.001, frames=FRAMES)
    asked: list[str] = []
    wedged = asyncio.Event()

    def on_stuck(job_id: str) -> None:
        asked.append(job_id)
        wedged.set()

    h = make(engine=engine, job_timeout=0.05, stuck_seconds=0.1, on_stuck=on_stuck)
    await h.runtime.start()
    await h.runtime.submit(h.request("hung", 1, seed=99))
    await h.runtime.submit(h.request("next", 2))
    assert (await h.wait_terminal("hung")).reason == "timeout"  # refunded at once
    await asyncio.sleep(0.03)
    assert asked == [] and h.runtime.snapshot().state == "ready"  # a slow return is not a wedge
    await asyncio.wait_for(wedged.wait(), 5)
    assert asked == ["hung"]
    snapshot = h.runtime.snapshot()
    assert snapshot.state == "stuck" and [w.job_id for w in snapshot.waiting] == ["next"]
    # The restart is decided: should the thread come back now, no clip starts before it.
    engine.release.set()
    await asyncio.sleep(0.1)
    assert EventKind.STARTED not in h.kinds("next") and h.runtime.snapshot().state == "stuck"
    started = time.monotonic()
    await h.runtime.stop(grace_seconds=60)  # the grace is for clips that can still finish
    assert time.monotonic() - started < 1.0
    assert (await h.wait_terminal("next")).reason == "shutdown"  # kept for after the restart
    assert asked == ["hung"]


def _breaks_on(seed: int) -> FakeEngine:
    """An engine whose clip with `seed` hits an illegal memory access, breaking the context."""

    def fail(options: AnimateOptions) -> BaseException | None:
        if options.seed == seed:
            return GPUUnusable("AcceleratorError: CUDA error: an illegal memory access")
        return None

    return FakeEngine(step_seconds=0.001, frames=FRAMES, fail_when=fail)


async def test_a_broken_gpu_keeps_the_clip_and_asks_for_a_restart_instead_of_failing_the_rest(
    make: Callable[..., Harness],
) -> None:
    # An illegal memory access poisons the CUDA context: every later clip would fail in seconds
    # with "something went wrong", for ever, while the health check said ready.
    asked: list[str] = []
    # The clip before it is still encoding when the GPU breaks: it is finished, not made again.
    h = make(engine=_breaks_on(seed=7), encoder=FakeEncoder(seconds=0.5), on_stuck=asked.append)
    await h.runtime.start()
    await h.runtime.submit(h.request("before", 1, seed=1))
    await h.runtime.submit(h.request("broke", 2, seed=7))
    await h.runtime.submit(h.request("next", 3, seed=3))
    broke = await h.wait_terminal("broke")
    assert (broke.kind, broke.reason) == (EventKind.INTERRUPTED, "gpu")  # kept, not refunded
    assert "restarting" in (broke.error or "")
    await asyncio.sleep(0.05)
    assert asked == ["broke"] and h.runtime.snapshot().state == "stuck"
    assert h.engine.runs == 2 and EventKind.STARTED not in h.kinds("next")
    await h.runtime.stop(grace_seconds=60)
    assert (await h.wait_terminal("before")).kind is EventKind.DONE
    assert (await h.wait_terminal("next")).reason == "shutdown"  # kept for after the restart


async def test_a_broken_gpu_with_nobody_to_restart_ends_the_waiting_clips(
    make: Callable[..., Harness],
) -> None:
    h = make(engine=_breaks_on(seed=7))  # a script or a benchmark: no on_stuck
    await h.runtime.start()
    await h.runtime.submit(h.request("broke", 1, seed=7))
    await h.runtime.submit(h.request("next", 2, seed=3))
    assert (await h.wait_terminal("broke")).kind is EventKind.INTERRUPTED
    left = await asyncio.wait_for(h.wait_terminal("next"), 5)  # not waiting for ever
    assert (left.kind, left.reason) == (EventKind.FAILED, "gpu")
    assert h.runtime.snapshot().waiting == ()  # out of the line, not a member's place in it
    with pytest.raises(QueueClosed):  # nor will a new clip wait for ever
        await h.runtime.submit(h.request("later", 3, seed=4))
    await h.runtime.stop(grace_seconds=1)


async def test_a_load_that_broke_the_gpu_asks_for_the_restart_before_any_clip(
    make: Callable[..., Harness],
) -> None:
    # Else each member's clip in turn found the GPU broken, used up one of its tries and
    # restarted the bot.
    class BreaksOnLoad(FakeEngine):
        def load(self) -> None:
            raise GPUUnusable("AcceleratorError: CUDA error: unspecified launch failure")

    asked: list[str] = []
    h = make(engine=BreaksOnLoad(step_seconds=0.001, frames=FRAMES), on_stuck=asked.append)
    await h.runtime.start()
    with pytest.raises(GPUUnusable):
        await asyncio.wait_for(h.runtime.loaded(), 5)
    await h.runtime.submit(h.request("waiting", 1))
    for _ in range(200):
        if asked:
            break
        await asyncio.sleep(0.01)
    assert asked == [""] and h.runtime.snapshot().state == "stuck"
    assert h.engine.runs == 0 and EventKind.STARTED not in h.kinds("waiting")
    await h.runtime.stop(grace_seconds=1)
    assert (await h.wait_terminal("waiting")).reason == "shutdown"  # kept for after the restart


async def test_a_wedge_found_during_a_shutdown_keeps_saying_stopping(
    make: Callable[..., Harness],
) -> None:
    engine = Hangs(step_seconds=0.001, frames=FRAMES)
    wedged = asyncio.Event()
    h = make(
        engine=engine,
        job_timeout=0.05,
        stuck_seconds=0.2,
        cancel_wait_seconds=0.0,
        on_stuck=lambda _job: wedged.set(),
    )
    await h.runtime.start()
    await h.runtime.submit(h.request("hung", 1, seed=99))
    await h.wait_terminal("hung")
    stopping = asyncio.create_task(h.runtime.stop(grace_seconds=1.0))
    await asyncio.wait_for(wedged.wait(), 5)
    assert h.runtime.snapshot().state == "stopping"
    await asyncio.wait_for(stopping, 5)
    assert h.runtime.snapshot().state == "stopped"
    engine.release.set()


async def test_stop_lets_the_running_job_finish_within_the_grace_period(
    make: Callable[..., Harness],
) -> None:
    h = make(engine=FakeEngine(step_seconds=0.01, frames=FRAMES))
    await h.runtime.start()
    await h.runtime.submit(h.request("A1", 1, steps=10))
    await h.runtime.submit(h.request("B1", 2))
    await h.wait_for(lambda e: e.job_id == "A1" and e.kind is EventKind.STEP)
    await h.runtime.stop(grace_seconds=5)

    assert h.runtime.state == "stopped"
    a1, b1 = [await h.wait_terminal(j) for j in ("A1", "B1")]
    assert a1.kind is EventKind.DONE
    assert (b1.kind, b1.reason) == (EventKind.INTERRUPTED, "shutdown")
    assert h.engine.runs == 1
    with pytest.raises(QueueClosed):
        await h.runtime.submit(h.request("C1", 3))


async def test_stop_after_the_grace_period_interrupts_the_running_job_for_a_retry(
    make: Callable[..., Harness],
) -> None:
    h = make(engine=FakeEngine(step_seconds=0.02, frames=FRAMES))
    await h.runtime.start()
    await h.runtime.submit(h.request("A1", 1, steps=50))
    await h.wait_for(lambda e: e.job_id == "A1" and e.kind is EventKind.STEP)
    started = time.monotonic()
    await h.runtime.stop(grace_seconds=0.05)
    assert time.monotonic() - started < 0.05 + 0.5

    a1 = await h.wait_terminal("A1")
    # Not a user cancel: the caller keeps it for a retry after the restart.
    assert (a1.kind, a1.reason) == (EventKind.INTERRUPTED, "shutdown")
    assert [e.kind for e in h.journal] == [EventKind.STARTED, EventKind.INTERRUPTED]
    assert h.engine.steps_after_cancel <= 1


async def test_a_slow_subscriber_does_not_slow_the_worker(make: Callable[..., Harness]) -> None:
    h = make(engine=FakeEngine(step_seconds=0.0005, frames=FRAMES))
    slow = h.runtime.subscribe("J1")
    stalled = h.runtime.events()  # never read while the job runs
    await h.runtime.start()
    await h.runtime.submit(h.request("J1", steps=50))
    started = time.monotonic()
    await h.wait_terminal("J1")
    assert time.monotonic() - started < 2

    # The reader that fell behind still gets every state change and the latest progress.
    seen = []
    async for event in slow:
        seen.append(event)
        await asyncio.sleep(0.01)
    kinds = [e.kind for e in seen]
    assert kinds == [
        EventKind.QUEUED,
        EventKind.STARTED,
        EventKind.STEP,
        EventKind.DECODING,
        EventKind.ENCODING,
        EventKind.DONE,
    ]
    assert seen[2].step == 50
    assert stalled.pending <= 7
    stalled.close()


async def test_the_journal_is_awaited_before_the_job_moves_on(
    make: Callable[..., Harness],
) -> None:
    h = make(journal_delay=0.02)
    runs_when_journaled: list[tuple[str, EventKind, int, bool]] = []
    original = h.runtime._journal
    assert original is not None

    async def journal(event: JobEvent) -> None:
        runs_when_journaled.append(
            (event.job_id, event.kind, h.engine.runs, any(e is event for e in h.events))
        )
        await original(event)

    h.runtime._journal = journal
    await h.runtime.submit(h.request("A1", 1))
    await h.runtime.submit(h.request("B1", 2))
    await h.runtime.start()
    await h.wait_terminal("B1")

    for job_id in ("A1", "B1"):
        assert [e.kind for e in h.journal if e.job_id == job_id] == [
            EventKind.STARTED,
            EventKind.ENCODING,
            EventKind.DONE,
        ]
    started = [(j, runs) for j, kind, runs, _ in runs_when_journaled if kind is EventKind.STARTED]
    # "started" reached the journal before the engine ran the job.
    assert started == [("A1", 0), ("B1", 1)]
    # ...and before any subscriber heard of it.
    assert not any(published for *_, published in runs_when_journaled)


async def test_a_failing_journal_does_not_stop_the_worker(make: Callable[..., Harness]) -> None:
    h = make()

    async def journal(event: JobEvent) -> None:
        raise OSError("database is locked")

    h.runtime._journal = journal
    await h.runtime.start()
    await h.runtime.submit(h.request("A1"))
    assert (await h.wait_terminal("A1")).kind is EventKind.DONE


async def test_encoding_overlaps_the_next_jobs_generation(make: Callable[..., Harness]) -> None:
    h = make(
        engine=FakeEngine(step_seconds=0.01, frames=FRAMES),
        encoder=FakeEncoder(seconds=0.1),
    )
    for job_id, user in [("A1", 1), ("B1", 2), ("C1", 3)]:
        await h.runtime.submit(h.request(job_id, user, steps=5))
    await h.runtime.start()
    await h.wait_terminal("C1")
    order = [(e.job_id, e.kind) for e in h.events if e.kind in (EventKind.STARTED, EventKind.DONE)]
    # B1 started on the GPU while A1 was still encoding.
    assert order.index(("B1", EventKind.STARTED)) < order.index(("A1", EventKind.DONE))
    assert [e.job_id for e in h.terminal()] == ["A1", "B1", "C1"]
    for job_id in ("A1", "B1", "C1"):
        kinds = [k for k in h.kinds(job_id) if k not in (EventKind.STEP, EventKind.POSITION)]
        assert kinds == [
            EventKind.QUEUED,
            EventKind.STARTED,
            EventKind.DECODING,
            EventKind.ENCODING,
            EventKind.DONE,
        ]


@dataclass
class _SlowSmooth(FakeEncoder):
    """A smooth clip's encode (motion interpolation) lasts until a plain clip has been encoded,
    or `smooth_seconds`, whichever comes first; a plain clip's takes no time."""

    smooth_seconds: float = 3.0
    plain_done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, frames: Any, path: Path, **kwargs: Any) -> Any:
        if kwargs.get("interpolate"):
            self.plain_done.wait(self.smooth_seconds)
        clip = super().__call__(frames, path, **kwargs)
        if not kwargs.get("interpolate"):
            self.plain_done.set()
        return clip


async def test_two_encoders_post_a_plain_clip_while_a_smooth_one_still_encodes(
    make: Callable[..., Harness],
) -> None:
    h = make(encoder=_SlowSmooth(), encoders=2)
    await h.runtime.submit(h.request("A1", 1, interpolate=True))
    await h.runtime.submit(h.request("B1", 2))
    await h.runtime.start()
    await h.wait_terminal("A1")
    # B1 was made after A1 and posted first, its clip not held behind A1's interpolation.
    assert [(e.job_id, e.kind) for e in h.terminal()] == [
        ("B1", EventKind.DONE),
        ("A1", EventKind.DONE),
    ]


async def test_one_encoder_keeps_the_order_clips_were_made_in(
    make: Callable[..., Harness],
) -> None:
    h = make(encoder=_SlowSmooth(smooth_seconds=0.3))
    await h.runtime.submit(h.request("A1", 1, interpolate=True))
    await h.runtime.submit(h.request("B1", 2))
    await h.runtime.start()
    await h.wait_terminal("B1")
    assert [e.job_id for e in h.terminal()] == ["A1", "B1"]


@dataclass
class _SlowFor(FakeEncoder):
    """Takes `slow_seconds` for the clip of `slow_job`, no time for the others."""

    slow_job: str = ""
    slow_seconds: float = 0.0

    def __call__(self, frames: Any, path: Path, **kwargs: Any) -> Any:
        if path.stem == self.slow_job:
            time.sleep(self.slow_seconds)
        return super().__call__(frames, path, **kwargs)


async def test_an_encode_past_the_time_limit_fails_alone_and_leaves_no_file(
    make: Callable[..., Harness],
) -> None:
    h = make(encoder=_SlowFor(slow_job="A1", slow_seconds=0.8), job_timeout=0.5)
    await h.runtime.submit(h.request("A1", 1))
    await h.runtime.submit(h.request("B1", 2))
    await h.runtime.start()
    await h.wait_terminal("B1")
    outcomes = {e.job_id: e for e in h.terminal()}
    assert outcomes["A1"].kind is EventKind.FAILED and outcomes["A1"].reason == "timeout"
    error = outcomes["A1"].error or ""
    assert "Saving this clip" in error and "not charged" in error and "GPU" not in error
    # B1 waited for the one encoder thread A1's encode still held: its own encode is quick.
    assert outcomes["B1"].kind is EventKind.DONE
    await asyncio.sleep(0.8)  # A1's encode ends, late
    assert sorted(p.stem for p in h.output_dir.iterdir()) == ["B1"]


def test_a_containers_cpu_quota_limits_the_cores_counted(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("200000 100000\n")  # docker --cpus=2
    assert cgroup_cpu_quota(v2) == 2.0
    assert available_cpus(v2) == min(2, available_cpus(tmp_path / "none"))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1.parent) == 0.5
    assert available_cpus(v1.parent) == 1  # half a core is still one encoder
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(v1.parent) is None
    assert cgroup_cpu_quota(tmp_path / "none") is None


def test_encoders_for_a_host() -> None:
    assert encoders_for(1) == 1
    assert encoders_for(2) == 1  # the engine thread and the bot need the cores
    assert encoders_for(16) == 2
    assert 1 <= available_cpus()
    with pytest.raises(ValueError, match="at least 1"):
        LocalJobQueue(FakeEngine(), output_dir=Path("unused"), encoders=0)


async def test_cancel_during_encoding_discards_the_clip(make: Callable[..., Harness]) -> None:
    h = make(encoder=FakeEncoder(seconds=0.1))
    await h.runtime.start()
    await h.runtime.submit(h.request("A1"))
    await h.wait_for(lambda e: e.job_id == "A1" and e.kind is EventKind.ENCODING)
    assert await h.runtime.cancel("A1")
    assert (await h.wait_terminal("A1")).kind is EventKind.CANCELLED
    assert not (h.output_dir / "A1.mp4").exists()


async def test_caps_through_the_runtime(make: Callable[..., Harness]) -> None:
    h = make(queue=FairQueue(max_per_user=2, max_waiting=50))
    await h.runtime.submit(h.request("A1", 1))
    h.runtime.check_admission(1)
    await h.runtime.submit(h.request("A2", 1))
    with pytest.raises(TooManyJobs):
        h.runtime.check_admission(1)
    with pytest.raises(TooManyJobs):
        await h.runtime.submit(h.request("A3", 1))
    h.runtime.check_admission(2)
    # After a restart, recorded jobs come back even over the cap.
    await h.runtime.submit(h.request("A3", 1), resume=True)
    assert len(h.runtime.snapshot().waiting) == 3


async def test_snapshot_shows_the_running_job(make: Callable[..., Harness]) -> None:
    h = make(engine=FakeEngine(step_seconds=0.02, frames=FRAMES))
    await h.runtime.start()
    await h.runtime.submit(h.request("A1", 1, steps=20))
    await h.runtime.submit(h.request("B1", 2, steps=20))
    await h.wait_for(lambda e: e.job_id == "A1" and e.kind is EventKind.STEP and (e.step or 0) >= 2)
    snapshot = h.runtime.snapshot()
    assert snapshot.state == "ready"
    assert [(r.job_id, r.phase) for r in snapshot.running] == [("A1", "generating")]
    assert snapshot.running[0].step >= 2 and snapshot.running[0].total == 20
    assert [w.job_id for w in snapshot.waiting] == ["B1"]
    # B1 waits for what remains of A1.
    assert 0 < snapshot.waiting[0].eta_seconds < 20 * 0.02 + 0.2


async def test_metrics_count_queue_waits_phases_and_failures(
    make: Callable[..., Harness],
) -> None:
    registry = CollectorRegistry()

    def fail(options: AnimateOptions) -> BaseException | None:
        return GenerationFailed("out of memory", reason="oom") if options.seed == 7 else None

    h = make(
        engine=FakeEngine(step_seconds=0.001, frames=FRAMES, fail_when=fail),
        metrics=Metrics(registry),
    )
    await h.runtime.submit(h.request("A1", 1))
    await h.runtime.submit(h.request("B1", 2, seed=7))
    assert registry.get_sample_value("svdbot_queue_waiting_jobs") == 2
    await h.runtime.start()
    await h.wait_terminal("B1")
    await h.wait_terminal("A1")

    assert registry.get_sample_value("svdbot_queue_waiting_jobs") == 0
    assert registry.get_sample_value("svdbot_jobs_total", {"outcome": "done"}) == 1
    assert registry.get_sample_value("svdbot_jobs_total", {"outcome": "failed"}) == 1
    assert registry.get_sample_value("svdbot_job_failures_total", {"reason": "oom"}) == 1
    assert registry.get_sample_value("svdbot_job_wait_seconds_count") == 2
    assert registry.get_sample_value("svdbot_job_phase_seconds_count", {"phase": "encode"}) == 1
    assert registry.get_sample_value("svdbot_worker_ready") == 1


async def test_a_clip_waiting_past_the_limit_for_an_encoder_thread_fails_too(
    make: Callable[..., Harness],
) -> None:
    # The one encoder thread is held far past the limit (ffmpeg going on after A1's timeout):
    # B1 does not sit in "encoding" for as long, it fails at its own limit.
    h = make(encoder=_SlowFor(slow_job="A1", slow_seconds=2.0), job_timeout=0.4)
    await h.runtime.submit(h.request("A1", 1))
    await h.runtime.submit(h.request("B1", 2))
    await h.runtime.start()
    started = time.monotonic()
    b1 = await h.wait_terminal("B1")
    assert (b1.kind, b1.reason) == (EventKind.FAILED, "timeout")
    assert time.monotonic() - started < 1.9  # before A1's encode let go of the thread
    # Failed before it began, B1's encode never runs: it would hold the thread for nothing,
    # and the clips after it would time out waiting behind it.
    await asyncio.sleep(2.5 - (time.monotonic() - started))
    assert [p.stem for p in h.encoder.calls] == ["A1"]


async def test_a_job_run_again_is_answered_by_its_new_run_not_its_old_outcome(
    make: Callable[..., Harness],
) -> None:
    # A scale-out worker that cancelled a clip (another worker had taken it over) may be sent
    # it again later (that worker died): the old "cancelled" must not stand for the new run.
    h = make()
    await h.runtime.submit(h.request("A1", 1))
    assert await h.runtime.cancel("A1")
    await h.runtime.start()
    events = h.runtime.subscribe("A1", fresh=True)
    await h.runtime.submit(h.request("A1", 1), resume=True)
    async with asyncio.timeout(10):
        outcome = [e async for e in events][-1]
    assert outcome.kind is EventKind.DONE

"""The embedded job runtime: the fair queue, the one GPU worker, and its events.

`LocalJobQueue` implements `JobQueue` in-process. One worker task owns the engine:

- the pipeline runs in ONE dedicated thread (a single-thread executor), never on the event loop
  and never two at once; `engine.load()` runs there first (warm-up) and sets `ready`;
- encoding runs after generation in its own executor (`encoders` threads), so the GPU starts
  denoising the next job while the CPU encodes the previous ones; at most one finished clip
  waits for a free encoder, which bounds the frames held in memory;
- progress crosses from the engine thread to the loop with `call_soon_threadsafe`, and reaches
  subscribers through `EventBus`, which never makes the worker wait;
- every state change (started, encoding, done, failed, cancelled, interrupted) is handed to the
  `journal` hook and awaited BEFORE the runtime goes on, so "running" is on disk before the job
  runs and "done" before anyone is told.

A job that raises fails alone: a user-safe reason goes out, the traceback goes to the log, and
the worker takes the next job. A job past its time limit is reported failed ("timeout") and asked
to stop at its next step; a thread cannot be killed, so if the engine never returns, the GPU stays
held (`snapshot().stuck_job_id`) and waiting jobs wait until it does. If it has not returned
`stuck_seconds` after the limit, the state becomes "stuck" and `on_stuck(job_id)` is called once:
a wedged driver call is only freed by ending the process, so the host restarts it; the worker
takes no more jobs, and `stop()` reports the waiting ones for the retry as on any shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from generation.errors import Cancelled, GenerationError, GenerationFailed, GPUUnusable
from generation.eta import EtaEstimator
from generation.front import (
    DEFAULT_FRAMES,
    GENERIC_ERROR,
    INPUT_ERROR,
    OOM_ERROR,
    SHUTDOWN_MESSAGE,
    Journal,
    QueueFront,
    TrackedJob,
)
from generation.jobs import EventKind, JobEvent
from generation.options import OutputFormat
from generation.queue import FairQueue, QueueClosed
from generation.results import EncodedClip, Engine, GenerationResult, Progress

if TYPE_CHECKING:
    from generation.metrics import Metrics

__all__ = [
    "GENERIC_ERROR",
    "INPUT_ERROR",
    "OOM_ERROR",
    "SHUTDOWN_MESSAGE",
    "Encoder",
    "LocalJobQueue",
    "open_prepared",
]

InputLoader = Callable[[Path], Image.Image]
# The name of the engine's thread, by which `python -m bot` finds one a shutdown gave up on.
ENGINE_THREAD_PREFIX = "svd-engine"
# How long loading (and compiling) a model for one clip may take outside its time limit.
LOAD_ALLOWANCE_SECONDS = 1800.0


class Encoder(Protocol):
    """`generation.encode.encode_clip`'s signature."""

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
    ) -> EncodedClip: ...


def open_prepared(path: Path) -> Image.Image:
    """Open an image the caller already checked and fitted (see `JobRequest.input_path`)."""
    with Image.open(path) as image:
        return image.convert("RGB")


ENCODE_TIMEOUT_MESSAGE = (
    "Saving this clip as a video took longer than the {limit:.0f}-second limit and was stopped; "
    "you were not charged. Try again without smooth or bounce, or as MP4 rather than GIF."
)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def encoders_for(cpus: int) -> int:
    """Encoder threads for a host with `cpus` cores: two when that leaves cores for the engine
    thread and the bot, else one. A `smooth` clip's motion interpolation is one core's work for
    about as long as the GPU takes to make a clip: with one encoder, a few of them in a row would
    hold the GPU back; two keep up, and an MP4 or GIF between them is not held behind one."""
    return 2 if cpus >= 4 else 1


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU set, within a container's CPU quota (`docker
    --cpus`), not the host's count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return cpus if quota is None else max(1, min(cpus, int(quota)))


def cgroup_cpu_quota(root: Path) -> float | None:
    """The CPUs a cgroup's quota allows (cgroup v2's `cpu.max`, else v1's CFS files), or None
    when there is no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def _default_encoder() -> Encoder:
    # Imported late so the runtime (and its fake-engine tests) do not need ffmpeg to import.
    from generation.encode import encode_clip

    return encode_clip


@dataclass(frozen=True)
class _Generated:
    job: TrackedJob
    result: GenerationResult
    seconds: float


class LocalJobQueue(QueueFront):
    """The in-process `JobQueue`: fair queue + one GPU worker + encoder, in this event loop."""

    def __init__(
        self,
        engine: Engine,
        *,
        output_dir: Path,
        queue: FairQueue | None = None,
        eta: EtaEstimator | None = None,
        encoder: Encoder | None = None,
        load_input: InputLoader = open_prepared,
        journal: Journal | None = None,
        metrics: Metrics | None = None,
        job_timeout: float | None = 600.0,
        cancel_wait_seconds: float = 10.0,
        encoders: int = 1,
        stuck_seconds: float | None = 120.0,
        on_stuck: Callable[[str], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(
            queue=queue,
            eta=eta,
            journal=journal,
            metrics=metrics,
            logger=logger if logger is not None else logging.getLogger("generation.worker"),
        )
        self._engine = engine
        self._output_dir = output_dir
        self._encoder = encoder if encoder is not None else _default_encoder()
        if encoders < 1:
            raise ValueError(f"encoders must be at least 1, not {encoders}")
        self._encoders = encoders
        self._load_input = load_input
        self._job_timeout = job_timeout
        self._cancel_wait = cancel_wait_seconds
        self._stuck_seconds = stuck_seconds
        self._on_stuck = on_stuck
        # The CUDA context broke (see `_gpu_lost`): no clip starts any more in this process.
        self._gpu_broken = False
        self._frames: dict[str | None, int] = {}
        self._learning: dict[str | None, asyncio.Task[None]] = {}
        self.ready = asyncio.Event()
        self.load_error: BaseException | None = None
        self._engine_pool: ThreadPoolExecutor | None = None
        self._encode_pool: ThreadPoolExecutor | None = None
        self._encode_q: asyncio.Queue[_Generated | None] = asyncio.Queue(maxsize=1)
        self._main: asyncio.Task[None] | None = None

    @property
    def encoders(self) -> int:
        """How many clips may be encoding at once (while the GPU makes the next)."""
        return self._encoders

    # -- the JobQueue interface --------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker; it loads the model first (`ready` is set once loaded). Jobs may be
        submitted before that: they wait."""
        if self._stopping:
            raise QueueClosed()
        if self._main is not None:
            return
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._engine_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=ENGINE_THREAD_PREFIX
        )
        self._encode_pool = ThreadPoolExecutor(
            max_workers=self._encoders, thread_name_prefix="svd-encode"
        )
        self._state = "loading"
        self._main = asyncio.create_task(self._run(), name="svd-worker")
        self._main.add_done_callback(self._worker_ended)

    async def loaded(self) -> None:
        """Until the first load has ended: returns once `ready`, raises the load's error when it
        failed. For a script or a benchmark, which has nothing to serve without the model; the
        bot keeps serving instead (each clip tries the load again)."""
        while not self.ready.is_set():
            if self.load_error is not None:
                raise self.load_error
            if self._main is None or self._main.done():
                raise RuntimeError(f"the worker is not running (state {self._state})")
            await asyncio.sleep(0.1)

    async def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return False
        if await self._cancel_waiting(job):
            return True
        job.log.info("cancel requested while %s", job.phase)
        job.request_stop("cancelled")
        return True

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking jobs; let the running one finish within `grace_seconds`, else stop it and
        report it `interrupted` (reason "shutdown") for the caller to retry after the restart.
        Waiting jobs are reported `interrupted` too: they stay queued in the caller's records."""
        self._log.info("stopping: %s waiting, grace %.1fs", len(self._queue), grace_seconds)
        # A wedged engine thread answers neither the grace nor a stop; a broken GPU's thread has
        # returned, and the clip before it may still be encoding: that one is let finish.
        wedged = self._state == "stuck" and not self._gpu_broken
        if not await self._close_line():
            return
        if self._main is not None:
            await asyncio.wait({self._main}, timeout=0.0 if wedged else grace_seconds)
            if not self._main.done():
                for job in list(self._jobs.values()):
                    job.log.warning("grace period over: stopping it for a retry after restart")
                    job.request_stop("shutdown")
                await asyncio.wait({self._main}, timeout=0.0 if wedged else self._cancel_wait)
            if not self._main.done():
                self._log.error("the engine did not stop; abandoning its thread")
                self._main.cancel()
                await asyncio.wait({self._main})
        await self._interrupt_all()
        for pool in (self._engine_pool, self._encode_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._closed()

    # -- the worker --------------------------------------------------------------------------

    async def _run(self) -> None:
        encoder_tasks = [
            asyncio.create_task(self._encode_loop(), name=f"svd-encoder-{i}")
            for i in range(self._encoders)
        ]
        try:
            await self._warm_up()
            while not self._gpu_broken:
                try:
                    queued = await self._queue.get()
                except QueueClosed:
                    break
                job = self._jobs[queued.job_id]
                try:
                    await self._generate(job)
                except Exception as exc:  # a bug of ours must not stop the queue either
                    await self._fail(job, exc, "the worker")
                if self._gpu_broken:
                    break  # the clip being encoded still finishes; the waiting ones wait
            for _ in encoder_tasks:
                await self._encode_q.put(None)
            await asyncio.gather(*encoder_tasks)
        finally:
            for task in encoder_tasks:
                task.cancel()

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Only a bug of ours gets here (jobs' own errors are caught): say so loudly.
            self._log.error("the worker stopped unexpectedly", exc_info=task.exception())
            self._state = "failed"

    async def _warm_up(self) -> None:
        self._state = "loading"
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._engine_pool, self._engine.load)
        except GPUUnusable as exc:
            # Broken by the load itself (a compile's warm-up kernel): each clip would find it so.
            self._log.critical(
                "the GPU is unusable (%s); only a new process can use it again", exc.detail
            )
            self.load_error = exc
            await self._give_up_gpu("")
            return
        except Exception as exc:
            # Keep serving: each job then tries the engine itself and fails with a clear message
            # (and a refund) rather than waiting forever; a transient problem heals by itself.
            self.load_error = exc
            self._state = "load_failed"
            if isinstance(exc, GenerationError) and exc.__cause__ is not None:
                # The engine logged the cause with its traceback: once is enough.
                self._log.error("loading the model failed: %s", exc.__cause__)
            else:
                self._log.exception("loading the model failed")
            # Logged: the tracebacks' frames would keep a half-placed pipeline in GPU memory
            # for as long as the error is kept, and the next try would have less room.
            _drop_tracebacks(exc)
            return
        if self._state == "loading":
            self._state = "ready"
        self.ready.set()
        if self._metrics is not None:
            self._metrics.set_ready(True)
        self._log.info("model loaded in %.1fs; ready", time.perf_counter() - started)

    async def _generate(self, job: TrackedJob) -> None:
        loop = asyncio.get_running_loop()
        job.begin(time.monotonic())
        job.expected_seconds = self.eta.estimate(job.queued.cost_units)
        # Now, not when it was taken from the line: the waiting ones' estimates count it.
        self._announce_positions()
        waited = job.started_at - job.queued.enqueued_at
        if self._metrics is not None:
            self._metrics.observe_wait(waited)
        self._set_queue_metrics()
        job.log.info("started after waiting %.1fs", waited)
        await self._emit(
            job,
            EventKind.STARTED,
            eta_seconds=job.expected_seconds,
            cost_units=job.queued.cost_units,
            total=job.request.options.num_inference_steps,
        )
        started = time.perf_counter()
        future = loop.run_in_executor(self._engine_pool, self._run_engine, job, loop)
        try:
            result = await self._within_time(job, future)
        except TimeoutError:
            await self._time_out(job, future)
            return
        except Cancelled:
            await self._stopped(job)
            return
        except GPUUnusable as exc:
            await self._gpu_lost(job, exc)
            return
        except Exception as exc:
            await self._fail(job, exc, "generation")
            return
        seconds = time.perf_counter() - started - result.load_seconds
        if self._state == "load_failed" and self._made_with_default(job, result):
            self._loaded_after_all()
        if job.stop_reason is not None:
            # The stop came after the engine's last check: honour it anyway.
            await self._stopped(job)
            return
        self.eta.record_duration(job.queued.cost_units, seconds)
        if self._metrics is not None:
            self._metrics.observe_phase("generate", seconds)
        job.generated_at = time.monotonic()
        job.log.info(
            "generated %s frames in %.1fs (plan %s, seed %s)",
            len(result.frames),
            seconds,
            result.plan,
            result.seed,
        )
        job.phase = "encoding"
        # Waits only while the encoder is busy AND another clip is already waiting for it.
        await self._encode_q.put(_Generated(job, result, seconds))

    async def _within_time(
        self, job: TrackedJob, future: asyncio.Future[GenerationResult]
    ) -> GenerationResult:
        """The engine's result, or TimeoutError once the clip has taken longer than the time
        limit. Loading or compiling a model for it (another model than the one loaded at start,
        a step down after running out of memory) does not count, up to `LOAD_ALLOWANCE_SECONDS`:
        a compile can take minutes, and the member would be told to ask for fewer steps."""
        if self._job_timeout is None:
            return await future
        while True:
            now = time.monotonic()
            excused = min(job.loading_seconds(now), LOAD_ALLOWANCE_SECONDS)
            left = job.started_at + excused + self._job_timeout - now
            if left <= 0:
                raise TimeoutError()
            # While a load goes on, the limit moves with it: look again soon.
            wait = min(left, 1.0) if job.loading else left
            # wait, not wait_for: the thread goes on after a timeout; we must know when it ends.
            done, _ = await asyncio.wait({future}, timeout=wait)
            if done:
                return future.result()

    def _made_with_default(self, job: TrackedJob, result: GenerationResult) -> bool:
        """Whether the clip used the default model, the one the load at start failed on (a clip
        on another model says nothing of it)."""
        models = getattr(self._engine, "models", None)
        if models:
            return result.model == models[0]
        return job.request.options.model is None

    def _loaded_after_all(self) -> None:
        """The load at start failed but a clip has now loaded the model (the problem was
        passing: a hub hiccup, a GPU busy with something else): ready, for the health check,
        the metrics and the workers' heartbeat alike."""
        self._log.info("the model loaded after all; ready")
        self._state = "ready"
        self.load_error = None
        self.ready.set()
        if self._metrics is not None:
            self._metrics.set_ready(True)

    def _run_engine(self, job: TrackedJob, loop: asyncio.AbstractEventLoop) -> GenerationResult:
        """In the engine thread."""

        def on_step(progress: Progress) -> None:
            loop.call_soon_threadsafe(self._on_progress, job, progress)

        try:
            image = self._load_input(job.request.input_path)
        except OSError as exc:  # missing or unreadable (PIL's UnidentifiedImageError included)
            raise GenerationFailed(INPUT_ERROR, reason="input") from exc
        return self._engine.run(image, job.request.options, on_step, job.cancel.is_set)

    async def _time_out(self, job: TrackedJob, future: asyncio.Future[GenerationResult]) -> None:
        job.request_stop("timeout")
        job.log.error("took longer than %.0fs; stopping it", self._job_timeout)
        await self._finish(
            job,
            EventKind.FAILED,
            reason="timeout",
            error=(
                f"This clip took longer than the {self._job_timeout:.0f}-second limit and was "
                "stopped; you were not charged. Try fewer frames or steps."
            ),
        )
        # The GPU is busy until the engine thread returns; nothing else may start on it before.
        self._stuck = job.job_id
        before = self._state
        try:
            returned, _ = await asyncio.wait({future}, timeout=self._stuck_seconds)
            if not returned:
                job.log.critical(
                    "the engine thread has not returned %.0f s after the time limit; the GPU is "
                    "wedged and only ending the process frees it",
                    self._stuck_seconds,
                )
                if not self._stopping:  # a shutdown under way keeps saying so
                    self._state = "stuck"
                if self._on_stuck is not None:
                    self._on_stuck(job.job_id)
                    # The restart is decided: take no more clips, even should the thread come
                    # back now; stop() ends this wait and keeps the waiting ones for the restart.
                    await asyncio.Event().wait()
            with contextlib.suppress(Exception):  # its outcome was reported already
                await future
        finally:
            self._stuck = None
            if self._state == "stuck":
                self._state = before
        job.log.info("engine thread returned after the timeout")

    async def _gpu_lost(self, job: TrackedJob, exc: GPUUnusable) -> None:
        """The CUDA context is broken: every clip after this one would fail within seconds
        ("something went wrong", for ever, health saying ready). Keep this clip for after the
        restart, take no other, and ask for the restart that gives the GPU back."""
        job.log.critical(
            "the GPU is unusable (%s); only a new process can use it again", exc.detail
        )
        await self._finish(job, EventKind.INTERRUPTED, reason="gpu", error=exc.user_message)
        await self._give_up_gpu(job.job_id)

    async def _give_up_gpu(self, job_id: str) -> None:
        """No clip starts here any more; ask for the restart (`job_id`: the clip it broke in,
        "" when the model's load did)."""
        self._gpu_broken = True
        if not self._stopping:
            self._state = "stuck"
        if self._metrics is not None:
            self._metrics.set_ready(False)
        if self._on_stuck is not None:
            self._on_stuck(job_id)  # the waiting clips are kept for after the restart
            return
        # Nobody will restart this process (a script, a benchmark): refuse new clips and end
        # the waiting ones rather than leave them waiting for ever.
        self._queue.close()
        waiting = self._queue.waiting()
        for queued in waiting:
            self._queue.remove(queued.job_id)
        for queued in waiting:
            if (left := self._jobs.get(queued.job_id)) is not None:
                await self._finish(left, EventKind.FAILED, reason="gpu", error=GENERIC_ERROR)

    def _on_progress(self, job: TrackedJob, progress: Progress) -> None:
        """On the loop, for each progress report from the engine thread."""
        if job.finished:
            return  # late reports from a job already reported stopped
        if progress.phase == "denoising":
            job.stepped(progress.step, progress.total, time.monotonic())
            self._bus.publish(
                JobEvent(
                    job.job_id,
                    EventKind.STEP,
                    user_id=job.request.user_id,
                    step=progress.step,
                    total=progress.total,
                    eta_seconds=self._remaining(job),
                )
            )
        elif progress.phase in ("decoding", "loading"):
            kind = EventKind.DECODING if progress.phase == "decoding" else EventKind.LOADING
            if kind is EventKind.LOADING:
                job.loading_model(time.monotonic())
            job.log.debug("%s", progress.phase)
            self._bus.publish(JobEvent(job.job_id, kind, user_id=job.request.user_id))

    # -- the encoder -------------------------------------------------------------------------

    async def _encode_loop(self) -> None:
        while True:
            item = await self._encode_q.get()
            if item is None:
                return
            try:
                await self._encode(item)
            except Exception as exc:
                await self._fail(item.job, exc, "the encoder")

    async def _encode(self, generated: _Generated) -> None:
        job, result = generated.job, generated.result
        if job.finished:
            return
        if job.stop_reason is not None:
            await self._stopped(job)
            return
        await self._emit(job, EventKind.ENCODING)
        options = job.request.options
        path = self._output_dir / f"{job.job_id}.{options.format}"
        encode = partial(
            self._encoder,
            result.frames,
            path,
            format=options.format,
            fps=options.output_fps,
            max_bytes=job.request.max_bytes,
            interpolate=options.interpolate,
            ping_pong=options.ping_pong,
        )
        loop = asyncio.get_running_loop()
        began: asyncio.Future[None] = loop.create_future()

        def timed() -> EncodedClip:
            loop.call_soon_threadsafe(_settle, began)
            return encode()

        assert self._encode_pool is not None  # made by start(), before any job runs
        work = self._encode_pool.submit(timed)
        future = asyncio.wrap_future(work)
        # The limit counts from the encode's start: a clip waiting for an encoder thread that a
        # slow one still holds has not begun, and must not time out for it.
        waits: set[asyncio.Future[Any]] = {began, future}
        # Not for ever either: behind encodes that ffmpeg keeps going, past the limit it fails.
        await asyncio.wait(waits, timeout=self._job_timeout, return_when=asyncio.FIRST_COMPLETED)
        started = time.perf_counter()
        try:
            if not (began.done() or future.done()):
                raise TimeoutError
            clip = await asyncio.wait_for(asyncio.shield(future), self._job_timeout)
        except TimeoutError:
            job.request_stop("timeout")
            job.log.error("encoding took longer than %.0fs", self._job_timeout)
            # One that has not begun never will (it would hold an encoder thread for nothing,
            # and the clips behind it would time out in turn). One that has goes on (ffmpeg is
            # not stopped from here): what it writes is removed.
            if not work.cancel():
                work.add_done_callback(lambda _done: path.unlink(missing_ok=True))
            await self._finish(
                job,
                EventKind.FAILED,
                reason="timeout",
                error=ENCODE_TIMEOUT_MESSAGE.format(limit=self._job_timeout),
            )
            return
        except Exception as exc:
            await self._fail(job, exc, "encoding")
            return
        encode_seconds = time.perf_counter() - started
        if job.stop_reason is not None:
            path.unlink(missing_ok=True)
            await self._stopped(job)
            return
        if self._metrics is not None:
            self._metrics.observe_phase("encode", encode_seconds)
            self._metrics.observe_phase("total", time.monotonic() - job.started_at)
            self._metrics.observe_gpu_memory()
        job.log.info(
            "done: %s, %d bytes, encoded in %.1fs%s",
            path.name,
            clip.size_bytes,
            encode_seconds,
            " (reduced to fit)" if clip.reduced else "",
        )
        await self._finish(
            job,
            EventKind.DONE,
            clip=clip,
            seed=result.seed,
            model=result.model,
            plan=result.plan,
            fallback_from=result.fallback_from,
            hints=result.hints,
            seconds=generated.seconds,
            encode_seconds=encode_seconds,
            load_seconds=result.load_seconds,
            cost_units=job.queued.cost_units,
        )

    # -- outcomes ------------------------------------------------------------------------------

    async def _stopped(self, job: TrackedJob) -> None:
        """The engine (or encoder) stopped because we asked it to."""
        reason = job.stop_reason or "cancelled"
        if reason == "timeout":
            return  # reported when the time ran out
        if reason == "shutdown":
            job.log.info("interrupted by shutdown")
            await self._finish(
                job, EventKind.INTERRUPTED, reason="shutdown", error=SHUTDOWN_MESSAGE
            )
            return
        job.log.info("cancelled at step %s of %s", job.step, job.total)
        await self._finish(
            job, EventKind.CANCELLED, reason="cancelled", error=Cancelled().user_message
        )

    # -- positions and estimates -------------------------------------------------------------

    def frames_for(self, model: str | None) -> int:
        """Frames the model makes (the engine's answer, kept once known)."""
        return self._frames_for(model)

    def _frames_for(self, model: str | None) -> int:
        known = self._frames.get(model)
        if known is not None:
            return known
        # An engine that can answer without waiting says so through `known_frames` (the SVD
        # engine, for models it has loaded or read); one without it answers at once anyway.
        at_once = getattr(self._engine, "known_frames", None)
        if at_once is None:
            return self._ask_engine(model) or DEFAULT_FRAMES
        count = at_once(model)  # never raises: None when unknown
        if count is not None:
            self._frames[model] = count
            return int(count)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._ask_engine(model) or DEFAULT_FRAMES  # no event loop to block
        # The engine may have to wait for the clip it is making (or the model it is loading)
        # and read the model's config to answer: never on the event loop, which must keep
        # answering Discord. Until it has answered, estimates use the usual count.
        if model not in self._learning:
            self._learning[model] = asyncio.create_task(self._learn_frames(model))
        return DEFAULT_FRAMES

    async def _learn_frames(self, model: str | None) -> None:
        if await asyncio.to_thread(self._ask_engine, model) is None:
            self._learning.pop(model, None)  # ask again next time

    def _ask_engine(self, model: str | None) -> int | None:
        try:
            count = self._engine.frames_for(model)
        except Exception:
            self._log.warning("engine could not say how many frames %s makes", model)
            return None
        self._frames[model] = count
        return count


def _drop_tracebacks(exc: BaseException) -> None:
    """Clear the tracebacks along an exception's chain, keeping the exceptions themselves."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__

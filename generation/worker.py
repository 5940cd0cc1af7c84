"""The embedded job runtime: the fair queue, the one GPU worker, and its events.

`LocalJobQueue` implements `JobQueue` in-process. One worker task owns the engine:

- the pipeline runs in ONE dedicated thread (a single-thread executor), never on the event loop
  and never two at once; `engine.load()` runs there first (warm-up) and sets `ready`;
- encoding runs after generation in a second single-thread executor, so the GPU starts denoising
  the next job while the CPU encodes the previous one; at most one finished clip waits for the
  encoder, which bounds the frames held in memory;
- progress crosses from the engine thread to the loop with `call_soon_threadsafe`, and reaches
  subscribers through `EventBus`, which never makes the worker wait;
- every state change (started, encoding, done, failed, cancelled, interrupted) is handed to the
  `journal` hook and awaited BEFORE the runtime goes on, so "running" is on disk before the job
  runs and "done" before anyone is told.

A job that raises fails alone: a user-safe reason goes out, the traceback goes to the log, and
the worker takes the next job. A job past its time limit is reported failed ("timeout") and asked
to stop at its next step; a thread cannot be killed, so if the engine never returns, the GPU stays
held (`snapshot().stuck_job_id`) and waiting jobs wait until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from generation.errors import (
    Cancelled,
    GenerationError,
    GenerationFailed,
    InvalidImage,
    InvalidOptions,
)
from generation.eta import EtaEstimator, job_cost
from generation.events import EventBus, Subscription
from generation.jobs import (
    JOURNALED,
    EventKind,
    JobEvent,
    JobRequest,
    QueueSnapshot,
    RunningJob,
    WaitingJob,
)
from generation.options import OutputFormat
from generation.queue import FairQueue, QueueClosed, QueuedJob
from generation.results import EncodedClip, Engine, GenerationResult, Progress

if TYPE_CHECKING:
    from generation.metrics import Metrics

GENERIC_ERROR = "Something went wrong on the GPU; you were not charged. Try again."
OOM_ERROR = (
    "The GPU ran out of memory for this clip; you were not charged. "
    "Try fewer frames or steps, or try again later."
)
INPUT_ERROR = (
    "The picture for this clip could not be read back; you were not charged. "
    "Please upload it again."
)
SHUTDOWN_MESSAGE = "The bot is restarting; your clip will be made when it is back."
# Frames per clip assumed for the ETA when the engine cannot say (SVD-XT's count).
_DEFAULT_FRAMES = 25

Journal = Callable[[JobEvent], Awaitable[None]]
InputLoader = Callable[[Path], Image.Image]


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
    ) -> EncodedClip: ...


def open_prepared(path: Path) -> Image.Image:
    """Open an image the caller already checked and fitted (see `JobRequest.input_path`)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _default_encoder() -> Encoder:
    # Imported late so the runtime (and its fake-engine tests) do not need ffmpeg to import.
    from generation.encode import encode_clip

    return encode_clip


class JobLog(logging.LoggerAdapter):
    """Puts the job id on every line: in the text, and as `job_id` for structured formatters."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return f"[job {extra.get('job_id')}] {msg}", kwargs


@dataclass(eq=False)
class _Job:
    queued: QueuedJob
    log: JobLog
    # Read by the engine thread between steps (`should_cancel`).
    cancel: threading.Event = field(default_factory=threading.Event)
    # Why a stop was asked for: "cancelled" (user), "timeout" or "shutdown".
    stop_reason: str | None = None
    # waiting → generating → encoding (or waiting for the encoder) → finished
    phase: str = "waiting"
    step: int = 0
    total: int = 0
    started_at: float = 0.0
    generated_at: float = 0.0
    expected_seconds: float = 0.0
    finished: bool = False

    @property
    def request(self) -> JobRequest:
        return self.queued.request

    @property
    def job_id(self) -> str:
        return self.queued.job_id

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()


@dataclass(frozen=True)
class _Generated:
    job: _Job
    result: GenerationResult
    seconds: float


class LocalJobQueue:
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
        logger: logging.Logger | None = None,
    ) -> None:
        self._engine = engine
        self._output_dir = output_dir
        self._queue = queue if queue is not None else FairQueue()
        self.eta = eta if eta is not None else EtaEstimator()
        self._encoder = encoder if encoder is not None else _default_encoder()
        self._load_input = load_input
        self._journal = journal
        self._metrics = metrics
        self._job_timeout = job_timeout
        self._cancel_wait = cancel_wait_seconds
        self._log = logger if logger is not None else logging.getLogger("generation.worker")
        self._bus = EventBus()
        self._jobs: dict[str, _Job] = {}
        self._positions: dict[str, int] = {}
        self._frames: dict[str | None, int] = {}
        self._state = "starting"
        self._stuck: str | None = None
        self.ready = asyncio.Event()
        self.load_error: BaseException | None = None
        self._engine_pool: ThreadPoolExecutor | None = None
        self._encode_pool: ThreadPoolExecutor | None = None
        self._encode_q: asyncio.Queue[_Generated | None] = asyncio.Queue(maxsize=1)
        self._main: asyncio.Task[None] | None = None
        # Set once stop() begins; a second stop() waits for `_stopped_event`.
        self._stopping = False
        self._stopped_event = asyncio.Event()

    # -- the JobQueue interface --------------------------------------------------------------

    @property
    def state(self) -> str:
        """starting, loading, ready, load_failed, stopping, stopped (or failed: a bug)."""
        return self._state

    async def start(self) -> None:
        """Start the worker; it loads the model first (`ready` is set once loaded). Jobs may be
        submitted before that: they wait."""
        if self._stopping:
            raise QueueClosed()
        if self._main is not None:
            return
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._engine_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svd-engine")
        self._encode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svd-encode")
        self._state = "loading"
        self._main = asyncio.create_task(self._run(), name="svd-worker")
        self._main.add_done_callback(self._worker_ended)

    def check_admission(self, user_id: int) -> None:
        if self._stopping:
            raise QueueClosed()
        self._queue.check(user_id)

    async def submit(self, request: JobRequest, *, resume: bool = False) -> JobEvent:
        if self._stopping:
            raise QueueClosed()
        cost = job_cost(request.options, self._frames_for(request.options.model))
        queued = self._queue.push(request, cost_units=cost, force=resume)
        job = _Job(queued, JobLog(self._log, {"job_id": request.job_id}))
        self._jobs[request.job_id] = job
        etas = self._waiting_etas()
        position = self._queue.position(request.job_id) or 1
        self._positions[request.job_id] = position
        event = JobEvent(
            request.job_id,
            EventKind.QUEUED,
            user_id=request.user_id,
            position=position,
            eta_seconds=etas.get(request.job_id),
            cost_units=cost,
        )
        job.log.info(
            "queued for user %s (guild %s) at position %s, cost %s%s",
            request.user_id,
            request.group,
            position,
            cost,
            " (resumed)" if resume else "",
        )
        self._bus.publish(event)
        self._announce_positions()
        return event

    async def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return False
        if self._queue.remove(job_id) is not None:
            job.log.info("cancelled while waiting")
            await self._finish(
                job, EventKind.CANCELLED, reason="cancelled", error=Cancelled().user_message
            )
            self._announce_positions()
            return True
        job.log.info("cancel requested while %s", job.phase)
        job.request_stop("cancelled")
        return True

    def subscribe(self, job_id: str) -> Subscription:
        return self._bus.subscribe(job_id)

    def events(self) -> Subscription:
        return self._bus.events()

    def latest(self, job_id: str) -> JobEvent | None:
        """The job's most recent event (kept a while after it finishes)."""
        return self._bus.latest(job_id)

    def snapshot(self) -> QueueSnapshot:
        etas = self._waiting_etas()
        waiting = tuple(
            WaitingJob(
                job_id=q.job_id,
                user_id=q.user_id,
                group=q.request.group,
                position=index,
                eta_seconds=etas[q.job_id],
                cost_units=q.cost_units,
            )
            for index, q in enumerate(self._queue.waiting(), start=1)
        )
        now = time.monotonic()
        running = tuple(
            RunningJob(
                job_id=job.job_id,
                user_id=job.request.user_id,
                group=job.request.group,
                phase=job.phase,
                step=job.step,
                total=job.total,
                elapsed_seconds=now - job.started_at,
            )
            for job in self._jobs.values()
            if job.phase in ("generating", "encoding") and not job.finished
        )
        return QueueSnapshot(self._state, waiting, running, self._stuck)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking jobs; let the running one finish within `grace_seconds`, else stop it and
        report it `interrupted` (reason "shutdown") for the caller to retry after the restart.
        Waiting jobs are reported `interrupted` too: they stay queued in the caller's records."""
        if self._stopping:
            await self._stopped_event.wait()
            return
        self._stopping = True
        self._state = "stopping"
        self._log.info("stopping: %s waiting, grace %.1fs", len(self._queue), grace_seconds)
        self._queue.close()
        for queued in self._queue.waiting():
            self._queue.remove(queued.job_id)
            await self._finish(
                self._jobs[queued.job_id],
                EventKind.INTERRUPTED,
                reason="shutdown",
                error=SHUTDOWN_MESSAGE,
            )
        if self._main is not None:
            await asyncio.wait({self._main}, timeout=grace_seconds)
            if not self._main.done():
                for job in list(self._jobs.values()):
                    job.log.warning("grace period over: stopping it for a retry after restart")
                    job.request_stop("shutdown")
                await asyncio.wait({self._main}, timeout=self._cancel_wait)
            if not self._main.done():
                self._log.error("the engine did not stop; abandoning its thread")
                self._main.cancel()
                await asyncio.wait({self._main})
        for job in list(self._jobs.values()):
            await self._finish(
                job, EventKind.INTERRUPTED, reason="shutdown", error=SHUTDOWN_MESSAGE
            )
        for pool in (self._engine_pool, self._encode_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._bus.close()
        self._state = "stopped"
        self._set_queue_metrics()
        self._log.info("stopped")
        self._stopped_event.set()

    # -- the worker --------------------------------------------------------------------------

    async def _run(self) -> None:
        encoder_task = asyncio.create_task(self._encode_loop(), name="svd-encoder")
        try:
            await self._warm_up()
            while True:
                try:
                    queued = await self._queue.get()
                except QueueClosed:
                    break
                self._announce_positions()
                job = self._jobs[queued.job_id]
                try:
                    await self._generate(job)
                except Exception as exc:  # a bug of ours must not stop the queue either
                    await self._fail(job, exc, "the worker")
            await self._encode_q.put(None)
            await encoder_task
        finally:
            encoder_task.cancel()

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
        except Exception as exc:
            # Keep serving: each job then tries the engine itself and fails with a clear message
            # (and a refund) rather than waiting forever; a transient problem heals by itself.
            self.load_error = exc
            self._state = "load_failed"
            self._log.exception("loading the model failed")
            return
        if self._state == "loading":
            self._state = "ready"
        self.ready.set()
        if self._metrics is not None:
            self._metrics.set_ready(True)
        self._log.info("model loaded in %.1fs; ready", time.perf_counter() - started)

    async def _generate(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        job.phase = "generating"
        job.started_at = time.monotonic()
        job.expected_seconds = self.eta.estimate(job.queued.cost_units)
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
            # shield: on timeout the thread goes on; we must still know when it returns.
            result = await asyncio.wait_for(asyncio.shield(future), self._job_timeout)
        except TimeoutError:
            await self._time_out(job, future)
            return
        except Cancelled:
            await self._stopped(job)
            return
        except Exception as exc:
            await self._fail(job, exc, "generation")
            return
        seconds = time.perf_counter() - started - result.load_seconds
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

    def _run_engine(self, job: _Job, loop: asyncio.AbstractEventLoop) -> GenerationResult:
        """In the engine thread."""

        def on_step(progress: Progress) -> None:
            loop.call_soon_threadsafe(self._on_progress, job, progress)

        try:
            image = self._load_input(job.request.input_path)
        except OSError as exc:  # missing or unreadable (PIL's UnidentifiedImageError included)
            raise GenerationFailed(INPUT_ERROR, reason="input") from exc
        return self._engine.run(image, job.request.options, on_step, job.cancel.is_set)

    async def _time_out(self, job: _Job, future: asyncio.Future[GenerationResult]) -> None:
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
        try:
            with contextlib.suppress(Exception):  # its outcome was reported already
                await future
        finally:
            self._stuck = None
        job.log.info("engine thread returned after the timeout")

    def _on_progress(self, job: _Job, progress: Progress) -> None:
        """On the loop, for each progress report from the engine thread."""
        if job.finished:
            return  # late reports from a job already reported stopped
        if progress.phase == "denoising":
            job.step, job.total = progress.step, progress.total
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
        )
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self._encode_pool, encode)
        try:
            clip = await asyncio.wait_for(asyncio.shield(future), self._job_timeout)
        except TimeoutError:
            job.request_stop("timeout")
            job.log.error("encoding took longer than %.0fs", self._job_timeout)
            await self._finish(job, EventKind.FAILED, reason="timeout", error=GENERIC_ERROR)
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

    async def _stopped(self, job: _Job) -> None:
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

    async def _fail(self, job: _Job, exc: Exception, phase: str) -> None:
        if isinstance(exc, GenerationFailed):
            reason, message = exc.reason, exc.user_message
        elif isinstance(exc, InvalidOptions | InvalidImage):
            reason, message = "invalid", exc.user_message
        elif isinstance(exc, GenerationError):
            reason, message = "error", exc.user_message
        elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            reason, message = "oom", OOM_ERROR
        else:
            reason, message = "error", GENERIC_ERROR
        job.log.error("failed during %s (%s)", phase, reason, exc_info=exc)
        await self._finish(job, EventKind.FAILED, reason=reason, error=message)

    async def _finish(self, job: _Job, kind: EventKind, **fields: Any) -> None:
        """Report a terminal event once; free the member's slot."""
        if job.finished:
            return
        job.finished = True
        self._queue.finish(job.job_id)
        self._positions.pop(job.job_id, None)
        if self._metrics is not None:
            self._metrics.finished(kind.value, fields.get("reason"))
        self._set_queue_metrics()
        try:
            await self._emit(job, kind, **fields)
        finally:
            self._jobs.pop(job.job_id, None)

    async def _emit(self, job: _Job, kind: EventKind, **fields: Any) -> None:
        """Journal (awaited) then publish."""
        event = JobEvent(job.job_id, kind, user_id=job.request.user_id, **fields)
        if kind in JOURNALED and self._journal is not None:
            try:
                await self._journal(event)
            except Exception:
                # A storage hiccup must not take the GPU down with it; the log keeps the trail.
                job.log.exception("journal failed for %s", kind.value)
        self._bus.publish(event)

    # -- positions and estimates -------------------------------------------------------------

    def _frames_for(self, model: str | None) -> int:
        if model not in self._frames:
            try:
                self._frames[model] = self._engine.frames_for(model)
            except Exception:
                self._log.warning("engine could not say how many frames %s makes", model)
                return _DEFAULT_FRAMES
        return self._frames[model]

    def _remaining(self, job: _Job) -> float:
        """Seconds until the running job's frames are ready."""
        elapsed = time.monotonic() - job.started_at
        if job.step > 0 and job.total > 0:
            return elapsed / job.step * (job.total - job.step)
        return max(job.expected_seconds - elapsed, 0.0)

    def _waiting_etas(self) -> dict[str, float]:
        """Seconds until the GPU starts each waiting job, in service order."""
        ahead = sum(
            self._remaining(job) for job in self._jobs.values() if job.phase == "generating"
        )
        etas = {}
        for queued in self._queue.waiting():
            etas[queued.job_id] = ahead
            ahead += self.eta.estimate(queued.cost_units)
        return etas

    def _announce_positions(self) -> None:
        """A `position` event for every waiting job whose place in line changed."""
        etas: dict[str, float] | None = None
        for index, queued in enumerate(self._queue.waiting(), start=1):
            if self._positions.get(queued.job_id) == index:
                continue
            self._positions[queued.job_id] = index
            if etas is None:
                etas = self._waiting_etas()
            self._bus.publish(
                JobEvent(
                    queued.job_id,
                    EventKind.POSITION,
                    user_id=queued.user_id,
                    position=index,
                    eta_seconds=etas[queued.job_id],
                )
            )
        self._set_queue_metrics()

    def _set_queue_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue(len(self._queue), len(self._queue.taken()))

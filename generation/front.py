"""The bot-facing half that every queue backend shares: the fair line, positions and ETAs, the
event bus and the journal.

`QueueFront` holds what a member sees of the queue whoever runs the jobs: `LocalJobQueue`
(generation/worker.py) runs them on this machine's GPU, `RedisJobQueue`
(generation/remote/queue.py) hands them to GPU workers elsewhere. Fairness, caps and cancelling a
waiting job live here, so a job never leaves the bot before its turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from generation.errors import (
    DISK_FULL_MESSAGE,
    Cancelled,
    GenerationError,
    GenerationFailed,
    InvalidImage,
    InvalidOptions,
    is_disk_full,
)
from generation.eta import EtaEstimator, job_cost, start_times
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
from generation.queue import FairQueue, QueueClosed, QueuedJob

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
DEFAULT_FRAMES = 25

Journal = Callable[[JobEvent], Awaitable[None]]


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
class TrackedJob:
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
    # Denoising is timed from here (monotonic; 0: from `started_at`) over the steps since
    # `steps_from`: after a model load (or compile) the clock restarts at the first step, since
    # the load is not denoising and would stretch every estimate of what is left.
    steps_since: float = 0.0
    steps_from: int = 0
    loading: bool = False
    # Seconds spent loading (or compiling) a model for this job, and when the current load
    # began: not the clip's own time, for its estimate or its time limit.
    load_spent: float = 0.0
    load_started: float = 0.0

    @property
    def request(self) -> JobRequest:
        return self.queued.request

    @property
    def job_id(self) -> str:
        return self.queued.job_id

    def begin(self, now: float) -> None:
        """A (new) attempt starts on a GPU."""
        self.phase = "generating"
        self.started_at = now
        self.step = 0
        self.steps_since, self.steps_from, self.loading = 0.0, 0, False
        self.load_spent = 0.0

    def loading_model(self, now: float) -> None:
        """The engine is loading (or compiling) a model before it can go on."""
        if not self.loading:
            self.loading, self.load_started = True, now

    def loading_seconds(self, now: float) -> float:
        """Seconds of this attempt spent loading models so far, the load under way included."""
        return self.load_spent + (now - self.load_started if self.loading else 0.0)

    def stepped(self, step: int, total: int, now: float) -> None:
        """The engine finished denoising step `step` of `total`."""
        if self.loading:
            self.loading = False
            self.load_spent += now - self.load_started
            self.steps_since, self.steps_from = now, step
        self.step, self.total = step, total

    def request_stop(self, reason: str) -> None:
        # A member's cancel wins over a shutdown's stop: told "cancelled, not charged", they
        # must not get (and pay for) the clip after the restart.
        if self.stop_reason is None or (reason == "cancelled" and self.stop_reason == "shutdown"):
            self.stop_reason = reason
        self.cancel.set()


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(reason, user-safe message) for an exception a job raised."""
    if is_disk_full(exc):  # however it surfaced: not the GPU's fault, nor fixed by a retry now
        return "disk", DISK_FULL_MESSAGE
    if isinstance(exc, GenerationFailed):
        return exc.reason, exc.user_message
    if isinstance(exc, InvalidOptions | InvalidImage):
        return "invalid", exc.user_message
    if isinstance(exc, GenerationError):
        return "error", exc.user_message
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom", OOM_ERROR
    return "error", GENERIC_ERROR


class QueueFront:
    """Waiting jobs in fair order, their events, and the journal; subclasses run the jobs."""

    def __init__(
        self,
        *,
        queue: FairQueue | None,
        eta: EtaEstimator | None,
        journal: Journal | None,
        metrics: Metrics | None,
        logger: logging.Logger,
    ) -> None:
        self._queue = queue if queue is not None else FairQueue()
        self.eta = eta if eta is not None else EtaEstimator()
        self._journal = journal
        self._metrics = metrics
        self._log = logger
        self._bus = EventBus()
        self._jobs: dict[str, TrackedJob] = {}
        self._positions: dict[str, int] = {}
        # Set while no GPU worker is there (Redis backend): places in line mean nothing then.
        self._on_hold = False
        self._state = "starting"
        self._stuck: str | None = None
        # Set once stop() begins; a second stop() waits for `_stopped_event`.
        self._stopping = False
        self._stopped_event = asyncio.Event()

    # -- what subclasses provide ---------------------------------------------------------------

    def _frames_for(self, model: str | None) -> int:
        """Frames the model makes when the options leave it open (for cost and ETA)."""
        return DEFAULT_FRAMES

    @property
    def _parallel(self) -> int:
        """How many jobs run at once (GPUs); waiting times divide by it."""
        return 1

    # -- the JobQueue interface ----------------------------------------------------------------

    @property
    def state(self) -> str:
        """starting, loading, ready, load_failed, stopping, stopped (or failed: a bug)."""
        return self._state

    @property
    def stuck_job_id(self) -> str | None:
        """The clip past its time limit whose engine call still holds the GPU (`snapshot()`'s,
        without the rest)."""
        return self._stuck

    def check_admission(self, user_id: int) -> None:
        if self._stopping:
            raise QueueClosed()
        self._queue.check(user_id)

    async def submit(self, request: JobRequest, *, resume: bool = False) -> JobEvent:
        if self._stopping:
            raise QueueClosed()
        known = self._jobs.get(request.job_id)
        if known is not None and not known.finished:
            # At-least-once callers (a retry, a restart) may submit an id twice: one job only.
            latest = self._bus.latest(request.job_id)
            if latest is not None:
                return latest
        cost = job_cost(request.options, self._frames_for(request.options.model))
        queued = self._queue.push(request, cost_units=cost, force=resume)
        job = TrackedJob(queued, JobLog(self._log, {"job_id": request.job_id}))
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
        self._queued(job)
        return event

    def _queued(self, job: TrackedJob) -> None:
        """A job joined the line (hook for backends that dispatch)."""

    def _announce_stalled(
        self, jobs: Iterable[TrackedJob] | None = None, *, reason: str | None = None
    ) -> None:
        """A `stalled` event for every unfinished job (or those given): no GPU worker is making
        it (`reason` None: none is connected; "resuming": one is back and will take it up).
        Their places are forgotten, so the next `_announce_positions` tells every waiting job
        its place again."""
        for job in list(self._jobs.values()) if jobs is None else list(jobs):
            if job.finished:
                continue
            self._positions.pop(job.job_id, None)
            self._bus.publish(
                JobEvent(job.job_id, EventKind.STALLED, user_id=job.request.user_id, reason=reason)
            )

    async def _cancel_waiting(self, job: TrackedJob) -> bool:
        """Cancel `job` if it is still in the line; False when it has left it."""
        if self._queue.remove(job.job_id) is None:
            return False
        job.log.info("cancelled while waiting")
        await self._finish(
            job, EventKind.CANCELLED, reason="cancelled", error=Cancelled().user_message
        )
        self._announce_positions()
        return True

    def subscribe(self, job_id: str, *, fresh: bool = False) -> Subscription:
        """`fresh`: the job is to run (again) now; an outcome of an earlier run of it here (one
        cancelled when another worker took it over) is not replayed as this run's."""
        if fresh and ((known := self._jobs.get(job_id)) is None or known.finished):
            self._bus.forget(job_id)
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

    async def _close_line(self) -> bool:
        """Stop taking jobs and report the waiting ones `interrupted` (they stay queued in the
        caller's records for after the restart). False if a stop is already under way."""
        if self._stopping:
            await self._stopped_event.wait()
            return False
        self._stopping = True
        self._state = "stopping"
        self._queue.close()
        # Out of the line at once, then reported one by one (each awaits the journal): a cancel
        # meanwhile finds them out of the line and marks them, and `_end` honours that.
        waiting = self._queue.waiting()
        for queued in waiting:
            self._queue.remove(queued.job_id)
        for queued in waiting:
            job = self._jobs.get(queued.job_id)
            if job is not None:
                await self._finish(
                    job, EventKind.INTERRUPTED, reason="shutdown", error=SHUTDOWN_MESSAGE
                )
        return True

    async def _interrupt_all(self) -> None:
        for job in list(self._jobs.values()):
            await self._finish(
                job, EventKind.INTERRUPTED, reason="shutdown", error=SHUTDOWN_MESSAGE
            )

    def _closed(self) -> None:
        self._bus.close()
        self._state = "stopped"
        self._set_queue_metrics()
        self._log.info("stopped")
        self._stopped_event.set()

    # -- outcomes ------------------------------------------------------------------------------

    async def _fail(self, job: TrackedJob, exc: Exception, phase: str) -> None:
        reason, message = failure_of(exc)
        job.log.error("failed during %s (%s)", phase, reason, exc_info=exc)
        await self._finish(job, EventKind.FAILED, reason=reason, error=message)

    async def _finish(self, job: TrackedJob, kind: EventKind, **fields: Any) -> None:
        """Report a terminal event once; free the member's slot."""
        await self._end(job, JobEvent(job.job_id, kind, user_id=job.request.user_id, **fields))

    async def _end(self, job: TrackedJob, event: JobEvent) -> None:
        """`_finish` with the terminal event already built (e.g. one a remote worker sent)."""
        if job.finished:
            return
        if event.kind is EventKind.INTERRUPTED and job.stop_reason == "cancelled":
            # Stopped for the shutdown, but the member cancelled it meanwhile: it is cancelled.
            event = JobEvent(
                job.job_id,
                EventKind.CANCELLED,
                user_id=job.request.user_id,
                reason="cancelled",
                error=Cancelled().user_message,
            )
        job.finished = True
        self._queue.finish(job.job_id)
        self._positions.pop(job.job_id, None)
        if self._metrics is not None:
            self._metrics.finished(event.kind.value, event.reason)
        self._set_queue_metrics()
        try:
            await self._record(job, event)
        finally:
            self._jobs.pop(job.job_id, None)
            self._finished(job)

    def _finished(self, job: TrackedJob) -> None:
        """A job ended (hook for backends that dispatch)."""

    async def _emit(self, job: TrackedJob, kind: EventKind, **fields: Any) -> None:
        await self._record(job, JobEvent(job.job_id, kind, user_id=job.request.user_id, **fields))

    async def _record(self, job: TrackedJob, event: JobEvent) -> None:
        """Journal (awaited) then publish."""
        if event.kind in JOURNALED and self._journal is not None:
            try:
                await self._journal(event)
            except Exception:
                # A storage hiccup must not take the GPU down with it; the log keeps the trail.
                job.log.exception("journal failed for %s", event.kind.value)
        self._bus.publish(event)

    # -- positions and estimates ---------------------------------------------------------------

    def _remaining(self, job: TrackedJob) -> float:
        """Seconds until the running job's frames are ready."""
        now = time.monotonic()
        if job.loading:
            # Loading a model, before the first step or after running out of memory (the clip
            # then starts over): nothing of this run is timed yet; the estimate stands.
            return job.expected_seconds
        done = job.step - job.steps_from
        if done > 0 and job.total > 0:
            since = job.steps_since or job.started_at
            return (now - since) / done * (job.total - job.step)
        if job.steps_since:
            # The first step after a load: its pace is not known yet.
            left = (job.total - job.step) / job.total if job.total > 0 else 1.0
            return job.expected_seconds * left
        return max(job.expected_seconds - (now - job.started_at), 0.0)

    def _waiting_etas(self) -> dict[str, float]:
        """Seconds until a GPU starts each waiting job, in service order."""
        running = [self._remaining(job) for job in self._jobs.values() if job.phase == "generating"]
        waiting = self._queue.waiting()
        starts = start_times(
            running, [self.eta.estimate(q.cost_units) for q in waiting], self._parallel
        )
        return {queued.job_id: start for queued, start in zip(waiting, starts, strict=True)}

    def _announce_positions(self) -> None:
        """A `position` event for every waiting job whose place in line changed (none while on
        hold: those jobs were told why they wait, and hear their places once it ends)."""
        if self._on_hold:
            self._set_queue_metrics()
            return
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

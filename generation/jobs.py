"""What goes into the job queue and what comes out of it: `JobRequest`, `JobEvent`, and the narrow
`JobQueue` interface that the embedded runtime (generation/worker.py) implements, so that a
distributed backend can stand beside it later without the bot noticing.

The bot talks to a queue only through `JobQueue`: submit a request, cancel it, read its events.
Persistence and quotas are the caller's business; the runtime hands it every state change through
a `journal` hook that it awaits before it moves on.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from generation.options import AnimateOptions
from generation.results import EncodedClip

# Job ids become file names (outputs/<job_id>.mp4): keep them to a safe alphabet.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_job_id(job_id: object) -> bool:
    """Letters, digits, _ and - only: a job id names files (its picture, its clip)."""
    return isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None


@dataclass(frozen=True)
class JobRequest:
    """One clip to make.

    `input_path` is the *prepared* image: the caller (bot/service.py) decodes, checks and fits the
    upload at submit time (so a bad image is refused before anything is charged or queued) and
    stores the fitted PNG under DATA_DIR; the worker only opens it. A runtime built with a
    different `load_input` may accept raw uploads instead (see `LocalJobQueue`).
    """

    job_id: str
    user_id: int
    options: AnimateOptions
    input_path: Path
    # The encoder's byte budget: the channel's upload limit.
    max_bytes: int
    # The guild, for logs and snapshots only; fairness is per user.
    group: int = 0

    def __post_init__(self) -> None:
        if not valid_job_id(self.job_id):
            raise ValueError(f"job_id must match {_JOB_ID.pattern}, got {self.job_id!r}")
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")


class EventKind(StrEnum):
    QUEUED = "queued"
    # The job's place in the line changed (fair queueing can also move a job back by one when a
    # member who has not had a turn yet joins).
    POSITION = "position"
    STARTED = "started"
    # A model switch is loading weights before the first step.
    LOADING = "loading"
    STEP = "step"
    DECODING = "decoding"
    ENCODING = "encoding"
    # No GPU worker is making the job (every worker is gone; reason "resuming": one is back and
    # will take it up). It waits, nothing is lost. Only the Redis backend says so; the next
    # position or progress event ends it.
    STALLED = "stalled"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Not finished because the runtime stopped (shutdown); the caller keeps it for a retry after
    # the restart. Never a user cancel and never the user's fault.
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def coalescable(self) -> bool:
        """Progress that a newer event of the same kind makes obsolete (latest wins)."""
        return self in (EventKind.STEP, EventKind.POSITION)


_TERMINAL = frozenset(
    {EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED, EventKind.INTERRUPTED}
)

# Kinds the runtime awaits the journal for before it goes on.
JOURNALED = frozenset(
    {
        EventKind.STARTED,
        EventKind.ENCODING,
        EventKind.DONE,
        EventKind.FAILED,
        EventKind.CANCELLED,
        EventKind.INTERRUPTED,
    }
)


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to one job. Fields that do not apply to a kind are None."""

    job_id: str
    kind: EventKind
    user_id: int = 0
    # queued / position: 1-based place in the line.
    position: int | None = None
    # queued / position: seconds until the GPU is expected to start the job;
    # started / step: seconds until its frames are expected to be ready.
    eta_seconds: float | None = None
    # step: denoising step `step` of `total`.
    step: int | None = None
    total: int | None = None
    # done: the file, and what the user may want to know about it.
    clip: EncodedClip | None = None
    seed: int | None = None
    model: str | None = None
    plan: str | None = None
    fallback_from: str | None = None
    hints: tuple[str, ...] = ()
    # done: seconds of generation (excluding model loading), the work the ETA is based on.
    seconds: float | None = None
    encode_seconds: float | None = None
    load_seconds: float | None = None
    # queued / started / done: frames × steps, the unit the ETA history is kept in.
    cost_units: int | None = None
    # failed / cancelled / interrupted: a message safe to show the member as is.
    error: str | None = None
    # failed / cancelled / interrupted: "oom", "timeout", "error", "input" (the stored picture is
    # missing or unreadable), "invalid" (options the model refused), "cancelled", "shutdown".
    # None of them costs the member a clip.
    reason: str | None = None

    @property
    def terminal(self) -> bool:
        return self.kind.terminal


@dataclass(frozen=True)
class WaitingJob:
    job_id: str
    user_id: int
    group: int
    position: int
    eta_seconds: float
    cost_units: int


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    user_id: int
    group: int
    # "generating" on the GPU or "encoding" on the CPU.
    phase: str
    step: int
    total: int
    elapsed_seconds: float


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as `/queue` shows it."""

    # starting, loading, ready, load_failed, stuck (the engine never returned), stopping, stopped
    state: str
    waiting: tuple[WaitingJob, ...]
    running: tuple[RunningJob, ...]
    # A job whose time ran out but whose engine thread has not returned yet: the GPU is held.
    stuck_job_id: str | None = None


class JobQueue(Protocol):
    """The queue as the bot sees it; the embedded `LocalJobQueue` and a distributed backend both
    satisfy it."""

    def check_admission(self, user_id: int) -> None:
        """Raise `TooManyJobs`, `QueueFull` or `QueueClosed` if a job from this member would be
        refused now; lets the caller refuse before it reserves quota or records anything."""
        ...

    async def submit(self, request: JobRequest, *, resume: bool = False) -> JobEvent:
        """Queue a job and return its `queued` event (position, ETA). Raises `TooManyJobs`,
        `QueueFull` or `QueueClosed` (nothing queued). Record the job before calling this: the
        worker may journal "started" as soon as the caller next awaits. `resume=True` re-queues
        a job recorded before a restart: the caps are not applied again."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job at once or a running one within a step; False if not found."""
        ...

    def subscribe(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The job's latest event, then each new one; ends after the terminal event."""
        ...

    def events(self) -> AsyncIterator[JobEvent]:
        """Every job's events from now on; ends when the queue stops."""
        ...

    def snapshot(self) -> QueueSnapshot: ...

    async def start(self) -> None: ...

    async def stop(self, grace_seconds: float) -> None: ...

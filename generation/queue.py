"""The fair queue: round-robin between members, first come first served within a member.

Fairness is kept with *rounds* (start-time fair queuing with one unit per job): a member's first
waiting job joins the current round, each further one the round after their previous one, and
jobs are served in (round, arrival) order. A member with five requests therefore gets one turn per
round while everyone else gets theirs, and a member whose job has just started goes to the back of
the line for their next one. Positions are computed from that same order, so they are exactly the
order in which the worker will take the jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from generation.errors import GenerationError, QueueFull, TooManyJobs
from generation.jobs import JobRequest


class QueueClosed(GenerationError):
    """The queue takes no more jobs: the bot is shutting down."""

    def __init__(self) -> None:
        super().__init__(
            "The bot is restarting and is not taking new clips right now. "
            "Please try again in a minute; nothing was charged."
        )


@dataclass(frozen=True)
class QueuedJob:
    request: JobRequest
    # Arrival order, the tie-break within a round.
    seq: int
    round: int
    enqueued_at: float
    # frames × steps: what the ETA multiplies by the recent seconds per unit.
    cost_units: int = 1

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def user_id(self) -> int:
        return self.request.user_id

    @property
    def order(self) -> tuple[int, int]:
        return (self.round, self.seq)


@dataclass
class _UserState:
    waiting: int = 0
    taken: int = 0
    # The round of this member's latest job (waiting or started).
    last_round: int = -1


@dataclass
class FairQueue:
    """Waiting jobs in fair order, plus the count of taken (running) jobs per member for the cap.

    Not thread-safe: use it from the event loop only.
    """

    max_per_user: int = 2
    max_waiting: int = 50
    clock: Callable[[], float] = time.monotonic
    # Seconds with nothing waiting or running after which the turns members had are forgotten.
    forget_after_idle: float = 600.0
    _waiting: dict[str, QueuedJob] = field(default_factory=dict, init=False)
    _taken: dict[str, QueuedJob] = field(default_factory=dict, init=False)
    _users: dict[int, _UserState] = field(default_factory=dict, init=False)
    _order: list[QueuedJob] | None = field(default=None, init=False)
    _round: int = field(default=0, init=False)
    _seq: int = field(default=0, init=False)
    _closed: bool = field(default=False, init=False)
    _idle_since: float = field(default=0.0, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        if self.max_per_user < 1 or self.max_waiting < 1:
            raise ValueError("max_per_user and max_waiting must be at least 1")

    # -- adding and removing ---------------------------------------------------------------

    def push(self, request: JobRequest, *, cost_units: int = 1, force: bool = False) -> QueuedJob:
        """Add a job; raises `TooManyJobs`/`QueueFull` unless `force` (re-queued after a restart:
        the member was admitted once already)."""
        if self._closed:
            raise QueueClosed()
        if request.job_id in self._waiting or request.job_id in self._taken:
            raise ValueError(f"job {request.job_id} is already queued")
        if not force:
            self.check(request.user_id)
        if (
            not self._waiting
            and not self._taken
            and self.clock() - self._idle_since >= self.forget_after_idle
        ):
            # After a quiet spell whoever comes is an equal: a turn had in a round that never
            # ended (one clip at a time keeps it from moving on) must not put its member behind
            # every newcomer hours later. A turn just had still counts.
            self._users.clear()
        user = self._users.setdefault(request.user_id, _UserState())
        job_round = max(self._round, user.last_round + 1)
        job = QueuedJob(request, self._seq, job_round, self.clock(), cost_units)
        self._seq += 1
        user.last_round = job_round
        user.waiting += 1
        self._waiting[job.job_id] = job
        self._touch()
        return job

    def check(self, user_id: int) -> None:
        """Raise what `push` would raise for this member now (`TooManyJobs`, `QueueFull`,
        `QueueClosed`), without queueing anything."""
        if self._closed:
            raise QueueClosed()
        active = self.active_count(user_id)
        if active >= self.max_per_user:
            raise TooManyJobs(active, self.max_per_user)
        if len(self._waiting) >= self.max_waiting:
            raise QueueFull(len(self._waiting), self.max_waiting)

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a waiting job out of the line (cancel); None if it is not waiting."""
        job = self._waiting.pop(job_id, None)
        if job is None:
            return None
        user = self._users[job.user_id]
        user.waiting -= 1
        # Give the member their turn back, so cancelling does not push their next job back;
        # but only that turn (the round before the cancelled job's): falling back to the round
        # before the current one would let a member who just had a turn cancel and resubmit to
        # get another ahead of everyone waiting.
        user.last_round = max(
            [j.round for j in self._waiting.values() if j.user_id == job.user_id]
            + [j.round for j in self._taken.values() if j.user_id == job.user_id]
            + [job.round - 1]
        )
        self._forget(job.user_id)
        self._touch()
        return job

    def take_nowait(self) -> QueuedJob | None:
        """The next job in fair order, now taken (running); None if nothing waits."""
        order = self.waiting()
        if not order:
            return None
        job = order[0]
        del self._waiting[job.job_id]
        self._taken[job.job_id] = job
        user = self._users[job.user_id]
        user.waiting -= 1
        user.taken += 1
        if job.round > self._round:
            self._round = job.round
            for user_id in list(self._users):
                self._forget(user_id)
        self._touch()
        return job

    async def get(self) -> QueuedJob:
        """Wait for the next job and take it; raises `QueueClosed` once closed."""
        while True:
            if self._closed:
                raise QueueClosed()
            job = self.take_nowait()
            if job is not None:
                return job
            self._changed.clear()
            await self._changed.wait()

    def finish(self, job_id: str) -> None:
        """A taken job ended (done, failed, cancelled): it no longer counts against its member."""
        job = self._taken.pop(job_id, None)
        if job is None:
            return
        self._users[job.user_id].taken -= 1
        self._forget(job.user_id)
        self._touch()

    def give_back(self, job_id: str) -> None:
        """A taken job that could not be started after all (its backend was unreachable) waits
        again, in the place it had: first in line."""
        job = self._taken.pop(job_id, None)
        if job is None:
            return
        self._waiting[job.job_id] = job
        user = self._users[job.user_id]
        user.taken -= 1
        user.waiting += 1
        self._touch()

    def close(self) -> None:
        """Refuse new jobs and wake `get()` so the worker can stop."""
        self._closed = True
        self._touch()

    # -- reading ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def waiting(self) -> list[QueuedJob]:
        """Waiting jobs in the order the worker will take them."""
        if self._order is None:
            self._order = sorted(self._waiting.values(), key=lambda j: j.order)
        return list(self._order)

    def taken(self) -> list[QueuedJob]:
        return list(self._taken.values())

    def get_job(self, job_id: str) -> QueuedJob | None:
        return self._waiting.get(job_id) or self._taken.get(job_id)

    def position(self, job_id: str) -> int | None:
        """1-based place in line; 0 when taken (running); None when unknown."""
        if job_id in self._taken:
            return 0
        if job_id not in self._waiting:
            return None
        for index, job in enumerate(self.waiting(), start=1):
            if job.job_id == job_id:
                return index
        return None  # pragma: no cover - the job is waiting, so it is in the order

    def active_count(self, user_id: int) -> int:
        user = self._users.get(user_id)
        return 0 if user is None else user.waiting + user.taken

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._waiting or job_id in self._taken

    # -- internals -------------------------------------------------------------------------

    def _touch(self) -> None:
        self._order = None
        self._changed.set()

    def _forget(self, user_id: int) -> None:
        # A member with nothing waiting or running whose last round has passed needs no state.
        user = self._users[user_id]
        if user.waiting == 0 and user.taken == 0 and user.last_round < self._round:
            del self._users[user_id]
        if not self._waiting and not self._taken:
            self._idle_since = self.clock()

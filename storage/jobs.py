"""Jobs in SQLite: every job, and every state it goes through, written before the bot moves on.
It is what the bot resumes from after a restart (`unfinished`), what `/queue` and
`/quota-admin queue` show, where waiting-time estimates learn from (`recent_durations`), and
what a server's moderators read of its usage (`usage`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import aiosqlite

from storage.clock import Clock, datetime_or_none, from_micros, micros_or_none, to_micros, utc_now
from storage.database import Database
from storage.errors import IllegalTransition, JobExists, JobNotFound
from storage.usage import GuildUsage


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    ENCODING = "encoding"
    # The clip is encoded and on disk but not yet posted.
    DONE = "done"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED})
# What a restart must pick up again: waiting, interrupted, or made but not posted.
UNFINISHED = (JobState.QUEUED, JobState.RUNNING, JobState.ENCODING, JobState.DONE)

# Where a job may go from each state. Back to QUEUED from RUNNING / ENCODING is the retry after a
# crash or a shutdown, from DONE the clip made again when its file was lost before it was posted;
# DONE may still fail when the clip cannot be posted for good.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.ENCODING, JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.ENCODING: frozenset(
        {JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.DONE: frozenset({JobState.DELIVERED, JobState.FAILED, JobState.QUEUED}),
    JobState.DELIVERED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    guild_id: int
    channel_id: int
    user_id: int
    application_id: int | None = None
    interaction_id: int | None = None
    # Lets anyone post as the bot in that channel for 15 minutes: kept out of any repr or log.
    interaction_token: str | None = field(default=None, repr=False)
    progress_message_id: int | None = None
    reply_to_message_id: int | None = None
    # The job's AnimateOptions as a dict (stored as JSON).
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    model: str | None = None
    seed: int | None = None
    input_path: str | None = None
    output_path: str | None = None
    # The upload budget in bytes the clip must fit.
    max_bytes: int | None = None
    state: JobState = JobState.QUEUED
    attempts: int = 0
    # Why it failed, in words safe to show the member.
    error: str | None = None
    # Filled in by `JobStore.create` when None.
    created_at: datetime | None = None
    # When the latest attempt started running.
    started_at: datetime | None = None
    # When it was delivered, failed or was cancelled.
    finished_at: datetime | None = None
    # Generation time (running → done); with cost_units, what waiting-time estimates learn from.
    duration_seconds: float | None = None
    # frames × steps.
    cost_units: int | None = None
    # How often Discord has refused the finished clip (the member is told at the first).
    delivery_tries: int = 0
    # The picture was marked as a spoiler: so is the clip (and its re-rolls).
    spoiler: bool = False
    # A link to the posted clip's message (None: not posted, deleted, or posted by an older
    # version of the bot).
    clip_url: str | None = None


_TIMES = ("created_at", "started_at", "finished_at")
_COLUMNS = tuple(f.name + ("_us" if f.name in _TIMES else "") for f in fields(JobRecord))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
# Fields `update` / `set_state` may change; state, attempts and timestamps have their own rules.
UPDATABLE = frozenset(
    {
        "interaction_token",
        "progress_message_id",
        "reply_to_message_id",
        "options",
        "model",
        "seed",
        "input_path",
        "output_path",
        "max_bytes",
        "error",
        "duration_seconds",
        "cost_units",
        "delivery_tries",
        "clip_url",
    }
)


class JobStore:
    def __init__(self, db: Database, *, clock: Clock = utc_now) -> None:
        self._db = db
        self._clock = clock

    async def create(self, record: JobRecord) -> JobRecord:
        """Record a new job (its first event too); raises `JobExists` for a known job id."""
        at = record.created_at or self._clock()
        record = replace(record, created_at=at)
        values = _to_row(record)
        async with self._db.transaction() as conn:
            exists = await conn.execute_fetchall(
                "SELECT 1 FROM jobs WHERE job_id = ?", (record.job_id,)
            )
            if list(exists):
                raise JobExists(record.job_id)
            await conn.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                values,
            )
            await _add_event(conn, record.job_id, record.state, at)
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._db.fetch(f"{_SELECT} WHERE job_id = ?", (job_id,))
        return _from_row(rows[0]) if rows else None

    async def set_state(self, job_id: str, state: JobState, **changes: Any) -> JobRecord:
        """Move the job to `state` (recording when), changing `changes` (names in UPDATABLE) too.

        Raises `IllegalTransition` when `state` cannot follow the current one (see TRANSITIONS)
        and `JobNotFound`. Running stamps `started_at`; done computes `duration_seconds` from it
        unless given (a number); delivered / failed / cancelled stamp `finished_at`. A change to
        None is written as None (that is how a path is forgotten).
        """
        return await self._change(job_id, JobState(state), changes)

    async def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Change fields (names in UPDATABLE) without a state change."""
        return await self._change(job_id, None, changes)

    async def requeue(
        self, job_id: str, *, refund_attempt: bool = False, fresh: bool = False
    ) -> JobRecord:
        """Put an interrupted job (running / encoding), or a finished one whose clip was lost
        (done), back in the queue; a job still queued is left as it is. `refund_attempt` gives
        back the attempt it used, for an orderly shutdown that was not the job's fault; `fresh`
        gives back all of them, for a clip made again from the start."""
        return await self._change(
            job_id,
            JobState.QUEUED,
            {},
            attempts_delta=-1 if refund_attempt else 0,
            reset_attempts=fresh,
            unless_already=True,
        )

    async def increment_attempts(self, job_id: str) -> int:
        """Count one more attempt (call as a run starts); returns the new count."""
        async with self._db.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "UPDATE jobs SET attempts = attempts + 1 WHERE job_id = ? RETURNING attempts",
                    (job_id,),
                )
            )
        if not rows:
            raise JobNotFound(job_id)
        return int(rows[0][0])

    async def unfinished(self, guild_id: int | None = None) -> list[JobRecord]:
        """Jobs a restart must pick up (queued, running, encoding, done), oldest first; only
        the guild's with `guild_id`."""
        where = "" if guild_id is None else " AND guild_id = ?"
        rows = await self._db.fetch(
            f"{_SELECT} WHERE state IN (?, ?, ?, ?){where} ORDER BY created_at_us, rowid",
            [s.value for s in UNFINISHED] + ([] if guild_id is None else [guild_id]),
        )
        return [_from_row(row) for row in rows]

    async def active_for_user(self, guild_id: int, user_id: int) -> list[JobRecord]:
        """The member's unfinished jobs in the guild, oldest first."""
        rows = await self._db.fetch(
            f"{_SELECT} WHERE guild_id = ? AND user_id = ? AND state IN (?, ?, ?, ?) "
            "ORDER BY created_at_us, rowid",
            [guild_id, user_id, *(s.value for s in UNFINISHED)],
        )
        return [_from_row(row) for row in rows]

    async def history(self, guild_id: int, user_id: int, limit: int = 10) -> list[JobRecord]:
        """The member's latest jobs in the guild, newest first."""
        rows = await self._db.fetch(
            f"{_SELECT} WHERE guild_id = ? AND user_id = ? "
            "ORDER BY created_at_us DESC, rowid DESC LIMIT ?",
            (guild_id, user_id, max(0, limit)),
        )
        return [_from_row(row) for row in rows]

    async def recent_durations(self, limit: int = 20) -> list[tuple[int, float]]:
        """(cost_units, seconds) of the latest `limit` generated clips, oldest first."""
        rows = await self._db.fetch(
            """
            SELECT cost_units, duration_seconds FROM jobs
            WHERE duration_seconds IS NOT NULL AND cost_units > 0
            ORDER BY started_at_us DESC, rowid DESC
            LIMIT ?
            """,
            (max(0, limit),),
        )
        return [(int(row[0]), float(row[1])) for row in reversed(rows)]

    async def usage(self, guild_id: int, since: datetime, *, top: int = 5) -> GuildUsage:
        """What the guild's members asked for since `since`: how it ended, who made most, and
        the median wait (to its first start: a retried clip waited once) and making time (its
        last run) of the posted clips. One read, so the figures agree with each other."""
        rows = await self._db.fetch(
            """
            SELECT j.state, j.user_id, j.created_at_us, j.duration_seconds,
                   (SELECT MIN(e.at_us) FROM job_events AS e
                    WHERE e.job_id = j.job_id AND e.state = ?) - j.created_at_us
            FROM jobs AS j
            WHERE j.guild_id = ? AND j.created_at_us >= ?
            """,
            (JobState.RUNNING.value, guild_id, to_micros(since)),
        )
        states = [JobState(row[0]) for row in rows]
        posted = [
            row for row, state in zip(rows, states, strict=True) if state is JobState.DELIVERED
        ]
        made: dict[int, list[int]] = {}  # user: [clips, first asked]
        for row in posted:
            entry = made.setdefault(int(row[1]), [0, int(row[2])])
            entry[0] += 1
            entry[1] = min(entry[1], int(row[2]))
        # Most clips first; a tie goes to who asked first, then the lower id (stable).
        ranked = sorted(made.items(), key=lambda item: (-item[1][0], item[1][1], item[0]))
        waits = [row[4] / 1e6 for row in posted if row[4] is not None and row[4] >= 0]
        makes = [float(row[3]) for row in posted if row[3] is not None]
        return GuildUsage(
            since=since,
            posted=len(posted),
            failed=states.count(JobState.FAILED),
            cancelled=states.count(JobState.CANCELLED),
            pending=sum(state in UNFINISHED for state in states),
            members=len(made),
            top=tuple((user, entry[0]) for user, entry in ranked[: max(0, top)]),
            wait_seconds=statistics.median(waits) if waits else None,
            make_seconds=statistics.median(makes) if makes else None,
        )

    async def events(self, job_id: str) -> list[tuple[JobState, datetime]]:
        """Every state the job went through, with when, oldest first."""
        rows = await self._db.fetch(
            "SELECT state, at_us FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [(JobState(row[0]), from_micros(row[1])) for row in rows]

    async def finished_with_files(self, before: datetime, limit: int = 100) -> list[JobRecord]:
        """Finished jobs (before `before`) that still name an input or output file: what a clean-up
        task may delete, then forget with `update(job_id, input_path=None, output_path=None)`."""
        # INDEXED BY: left to itself the planner takes jobs_by_state, which matches nearly every
        # job ever made (finished is what jobs end as), and scans them all each hour.
        rows = await self._db.fetch(
            f"{_SELECT} INDEXED BY jobs_with_files WHERE state IN (?, ?, ?) AND finished_at_us < ? "
            "AND (input_path IS NOT NULL OR output_path IS NOT NULL) "
            "ORDER BY finished_at_us LIMIT ?",
            [*(s.value for s in sorted(FINISHED)), to_micros(before), max(0, limit)],
        )
        return [_from_row(row) for row in rows]

    async def forget_finished(self, before: datetime, limit: int = 500) -> int:
        """Delete up to `limit` jobs (and their events) that finished before `before` and whose
        files are gone already; returns how many. The history a host keeps is bounded."""
        # created_at_us < before too: jobs_by_state then reads only the old rows' range (a job
        # is made before it finishes) rather than every finished job.
        return await self._db.execute(
            "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs "
            "WHERE state IN (?, ?, ?) AND created_at_us < ? AND finished_at_us < ? "
            "AND input_path IS NULL AND output_path IS NULL LIMIT ?)",
            [*(s.value for s in sorted(FINISHED)), to_micros(before), to_micros(before), limit],
        )

    async def _change(
        self,
        job_id: str,
        state: JobState | None,
        changes: dict[str, Any],
        *,
        attempts_delta: int = 0,
        reset_attempts: bool = False,
        unless_already: bool = False,
    ) -> JobRecord:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise TypeError(f"cannot set job fields: {', '.join(sorted(unknown))}")
        at = self._clock()
        async with self._db.transaction() as conn:
            rows = list(await conn.execute_fetchall(f"{_SELECT} WHERE job_id = ?", (job_id,)))
            if not rows:
                raise JobNotFound(job_id)
            old = _from_row(rows[0])
            if unless_already and state is old.state:
                return old
            attempts = 0 if reset_attempts else max(0, old.attempts + attempts_delta)
            new = replace(old, **changes, attempts=attempts)
            if state is not None:
                if state not in TRANSITIONS[old.state]:
                    raise IllegalTransition(job_id, old.state.value, state.value)
                new = _stamp(replace(new, state=state), at)
            values = dict(zip(_COLUMNS, _to_row(new), strict=True))
            del values["job_id"]
            # Column names come from JobRecord's fields, never from the caller; values are bound.
            await conn.execute(
                f"UPDATE jobs SET {', '.join(f'{name} = :{name}' for name in values)} "
                "WHERE job_id = :job_id",
                {**values, "job_id": job_id},
            )
            if state is not None:
                await _add_event(conn, job_id, state, at)
        return new


def _stamp(record: JobRecord, at: datetime) -> JobRecord:
    """The timestamps a move into `record.state` records."""
    if record.state is JobState.RUNNING:
        return replace(record, started_at=at, finished_at=None)
    if record.state is JobState.DONE and record.duration_seconds is None and record.started_at:
        return replace(record, duration_seconds=(at - record.started_at).total_seconds())
    if record.state.finished:
        return replace(record, finished_at=at)
    return record


async def _add_event(
    conn: aiosqlite.Connection, job_id: str, state: JobState, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO job_events (job_id, state, at_us) VALUES (?, ?, ?)",
        (job_id, state.value, to_micros(at)),
    )


def _to_row(record: JobRecord) -> tuple[Any, ...]:
    values: list[Any] = []
    for f in fields(JobRecord):
        value = getattr(record, f.name)
        if f.name in _TIMES:
            value = micros_or_none(value)
        elif f.name == "options":
            value = json.dumps(value, sort_keys=True)
        elif f.name == "state":
            value = JobState(value).value
        values.append(value)
    return tuple(values)


def _from_row(row: Any) -> JobRecord:
    values: dict[str, Any] = {}
    for f, value in zip(fields(JobRecord), row, strict=True):
        if f.name in _TIMES:
            value = datetime_or_none(value)
        elif f.name == "options":
            value = json.loads(value)
        elif f.name == "state":
            value = JobState(value)
        elif f.name == "spoiler":
            value = bool(value)
        values[f.name] = value
    return JobRecord(**values)

"""The taskiq broker both sides use, and the registry of live workers.

taskiq-redis's `RedisStreamBroker` gives at-least-once delivery: a message stays pending in the
consumer group until the worker acknowledges it (we do so only after the job's outcome is
stored), and a message left pending longer than `idle_timeout` by a dead worker is claimed by
another (XAUTOCLAIM). Two settings matter for a GPU queue: each worker reads ONE message at a
time (`xread_count=1`, and taskiq's prefetch of 0), and reads the next only once the last one's
clip has left its GPU (`Room`), so a busy worker never sits on a job that an idle one could run;
and the reclaim timeout is longer than the longest job, so a job still running on a live worker
is never handed to a second one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage
from taskiq_redis import RedisStreamBroker

from generation.remote.wire import Keys

log = logging.getLogger(__name__)

# Keep the stream from growing without end; acknowledged messages are history only.
STREAM_MAXLEN = 10_000
# Waits between tries while Redis is unreachable (a restart, a network blip): short at first.
OUTAGE_FIRST_WAIT = 0.5
OUTAGE_MAX_WAIT = 10.0


def connection_options(*, bulk: bool = False) -> dict[str, Any]:
    """For every Redis connection of ours: a command on a connection Redis dropped (after a
    restart every pooled connection is stale) reconnects and runs again, rather than failing
    the clip that sent it. redis-py retries nothing unless told to. A transfer that timed out
    is not run again here: at its long timeout, three more tries would hold the caller (the
    bot's dispatch tick) for many minutes; its own caller tries again."""
    errors: list[type[Exception]] = [RedisConnectionError]
    if not bulk:
        errors.append(RedisTimeoutError)
    return {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=3),
        "retry_on_error": errors,
    }


# redis-py gives up on a command after 5 s. A clip of several MB (a picture of up to 25) takes
# longer than that over a slow link, each try cut short and sent again from the start: the
# transfers get a connection of their own that waits this long.
BULK_TIMEOUT_SECONDS = 300.0


def connect(url: str, *, bulk: bool = False) -> Redis:
    """A client; `bulk`: for moving pictures and clips, with a timeout long enough for them
    (the other commands keep redis-py's 5 s, which tells a hung Redis from a slow one)."""
    if bulk:
        return Redis.from_url(
            url, socket_timeout=BULK_TIMEOUT_SECONDS, **connection_options(bulk=True)
        )
    return Redis.from_url(url, **connection_options())


class Outage:
    """Waits that grow while Redis stays unreachable, and a log line for each."""

    def __init__(self) -> None:
        self._wait = OUTAGE_FIRST_WAIT

    async def pause(self, what: str, exc: BaseException) -> None:
        log.warning("%s: Redis is unreachable (%s); trying again in %.1f s", what, exc, self._wait)
        await asyncio.sleep(self._wait)
        self._wait = min(self._wait * 2, OUTAGE_MAX_WAIT)

    def over(self) -> None:
        self._wait = OUTAGE_FIRST_WAIT


def honour_cancel() -> None:
    """Raise CancelledError if this task was asked to stop.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses inside its pool and reads) can swallow
    a cancel that lands just as the awaited call completes; a `while True` loop around Redis
    calls would then never end. Loops call this once a turn so a lost cancel still stops them.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


class Room:
    """Whether a worker may read another job message: not while the job it read last waits for
    or runs on its GPU (an idle worker should take the next one), but as soon as that clip is
    being encoded, which is CPU work: the GPU starts the next clip meanwhile.

    The broker `take`s each message it hands out; the worker names the job it turned out to be
    (`claim`) and frees the room when that job is encoding (`free_job`); the receiver frees it
    when the message's handling ends, for one that never got that far (already made, made
    elsewhere, not ours)."""

    def __init__(self) -> None:
        self._message: object | None = None
        self._job_id: str | None = None
        self._closed = False
        self._paused_until = 0.0
        self._free = asyncio.Event()
        self._free.set()

    def pause_until(self, when: float) -> None:
        """No reads before `when` (monotonic time): the worker cannot take a clip till then."""
        self._paused_until = max(self._paused_until, when)

    def close(self) -> None:
        """No more reads, for good (the worker is stopping)."""
        self._closed = True
        self._free.clear()

    async def wait(self) -> None:
        while True:
            await self._free.wait()
            left = self._paused_until - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    def take(self, message: object) -> None:
        self._message, self._job_id = message, None
        self._free.clear()

    def claim(self, job_id: str) -> None:
        """The message read last is `job_id`'s (called when its handling starts: the room is
        closed from its read until then, so no later message can be taken for it)."""
        if self._message is not None and self._job_id is None:
            self._job_id = job_id

    def free_job(self, job_id: str) -> None:
        if self._message is not None and self._job_id == job_id:
            self._open()

    def free_message(self, message: object) -> None:
        if self._message is message:
            self._open()

    def _open(self) -> None:
        self._message = self._job_id = None
        if not self._closed:
            self._free.set()


class JobStreamBroker(RedisStreamBroker):
    """`RedisStreamBroker` that looks for a dead worker's messages on every turn, and reads
    only when the worker has room (`Room`; none given: one message at a time, as the receiver
    allows).

    taskiq-redis 1.2 runs XAUTOCLAIM only after XREADGROUP returned new messages, so on a quiet
    queue a job stranded by a killed worker would wait for the next submission. Here each turn
    first claims one stale message, then reads one new message.
    """

    room: Room | None = None

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Messages one at a time, for ever: while Redis is unreachable (restarting, say) it
        waits and tries again, so a worker outlives a Redis restart instead of exiting."""
        outage = Outage()
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                honour_cancel()
                if self.room is not None:
                    await self.room.wait()
                try:
                    messages = await self._next(redis)
                except RedisError as exc:
                    # NOGROUP: Redis came back without its data (no persistence); start afresh.
                    if "NOGROUP" in str(exc) and await self._made_group(redis):
                        continue
                    await outage.pause("reading the job stream", exc)
                    continue
                outage.over()
                for msg_id, msg in messages:
                    message = self._ackable(msg_id, msg)
                    if self.room is not None:
                        self.room.take(message)
                    yield message

    async def _next(self, redis: Redis) -> list[tuple[Any, dict[bytes, bytes]]]:
        """One stale message of a dead worker's, else at most one new message."""
        claimed: Any = await redis.xautoclaim(
            name=self.queue_name,
            groupname=self.consumer_group_name,
            consumername=self.consumer_name,
            min_idle_time=self.idle_timeout,
            count=1,
        )
        stale = [(msg_id, msg) for msg_id, msg in claimed[1] if msg]
        for msg_id, _msg in stale:
            log.warning("reclaimed job message %s from a worker that went quiet", msg_id)
        if stale:
            return stale
        fetched: Any = await redis.xreadgroup(
            self.consumer_group_name,
            self.consumer_name,
            {self.queue_name: ">"},
            block=self.block,
            count=1,
        )
        return [(msg_id, msg) for _stream, messages in fetched or [] for msg_id, msg in messages]

    async def _made_group(self, redis: Redis) -> bool:
        """Make the consumer group again; whether it now exists."""
        try:
            await redis.xgroup_create(
                self.queue_name, self.consumer_group_name, id="0", mkstream=True
            )
        except RedisError as exc:
            return "BUSYGROUP" in str(exc)  # another worker made it first
        log.warning("made the consumer group %s again", self.consumer_group_name)
        return True

    async def leave_group(self, redis: Redis) -> bool:
        """Take this worker's consumer out of the group, unless it still holds a message (one
        handed back at a stop: deleting the consumer would delete that claim, and the job with
        it, where another worker reclaims it now). Each start is a consumer of its own (host
        and pid), so without this the group keeps one for every start there ever was."""
        assert self.consumer_name is not None
        held = await redis.xpending_range(
            self.queue_name,
            self.consumer_group_name,
            min="-",
            max="+",
            count=1,
            consumername=self.consumer_name,
        )
        if held:
            return False
        await redis.xgroup_delconsumer(
            self.queue_name, self.consumer_group_name, self.consumer_name
        )
        return True

    def _ackable(self, msg_id: Any, msg: dict[bytes, bytes]) -> AckableMessage:
        return AckableMessage(
            data=msg[b"data"], ack=self._ack_generator(id=msg_id, queue_name=self.queue_name)
        )


def make_broker(
    url: str,
    keys: Keys,
    *,
    reclaim_seconds: float,
    consumer_name: str | None = None,
    block_seconds: float = 1.0,
) -> JobStreamBroker:
    return JobStreamBroker(
        url,
        queue_name=keys.stream,
        consumer_group_name=f"{keys.prefix}-workers",
        consumer_name=consumer_name,
        # A group created after the bot's first message must still see it.
        consumer_id="0",
        xread_block=max(int(block_seconds * 1000), 1),
        idle_timeout=int(reclaim_seconds * 1000),
        xread_count=1,
        unacknowledged_batch_size=1,
        maxlen=STREAM_MAXLEN,
        **connection_options(),
    )


# Worker states in which it takes clips (its heartbeat says which).
SERVING = frozenset({"ready", "busy"})


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says of itself in its heartbeat."""

    name: str
    # loading, ready, busy, load_failed, disk_full (for a while), stopping
    state: str
    job_id: str | None = None
    # Frames each model it has looked at makes (for the bot's cost and ETA).
    frames: dict[str, int] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "state": self.state, "job_id": self.job_id, "frames": self.frames}
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        data = json.loads(text)
        return cls(
            name=str(data["name"]),
            state=str(data.get("state", "ready")),
            job_id=data.get("job_id"),
            frames=data.get("frames") or None,
        )


async def live_workers(redis: Redis, keys: Keys) -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired."""
    names = [key async for key in redis.scan_iter(match=keys.workers, count=100)]
    if not names:
        return []
    found = []
    for raw in await redis.mget(names):
        if raw is None:
            continue  # expired between the scan and the read
        try:
            found.append(WorkerInfo.from_json(raw))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed worker heartbeat")
    return sorted(found, key=lambda w: w.name)

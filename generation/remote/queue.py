"""`RedisJobQueue`: the bot's `JobQueue` when the GPUs are in other processes or machines.

The fair line, the caps, positions and cancelling a waiting job stay in the bot (`QueueFront`);
a job leaves it only when a worker is free to take it: at most as many jobs are handed to taskiq
as there are live workers, so a job cancelled while waiting never left the bot, and the order the
members see is the order the GPUs work in.

Handing a job over: the prepared picture goes to a Redis key with a time-to-live, then a taskiq
message with the job id and options goes on the stream. The worker's events come back over
pub/sub and are journaled and published here exactly as the embedded queue does, so the bot does
not know which backend it has. Every tick also reads the stored result of each job in flight,
so a terminal event missed on pub/sub (a reconnect) is picked up anyway, and a job finished while
the bot was down is delivered when the bot submits it again after its restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq.kicker import AsyncKicker

from generation.errors import DISK_FULL_MESSAGE, Cancelled, GenerationFailed, is_disk_full
from generation.eta import EtaEstimator
from generation.front import (
    DEFAULT_FRAMES,
    GENERIC_ERROR,
    INPUT_ERROR,
    Journal,
    QueueFront,
    TrackedJob,
)
from generation.jobs import EventKind, JobEvent
from generation.queue import FairQueue, QueueClosed
from generation.remote.broker import (
    SERVING,
    JobStreamBroker,
    WorkerInfo,
    connect,
    honour_cancel,
    live_workers,
    make_broker,
)
from generation.remote.wire import CLAIM_SECONDS, TASK_NAME, Keys, event_from_json

if TYPE_CHECKING:
    from generation.metrics import Metrics

LOST_CLIP_ERROR = (
    "The finished clip was lost on its way back from the GPU; you were not charged. Try again."
)

# Ticks a stored result may fail to be taken in (its clip not writable here) before its job fails.
RESULT_TRIES = 5


class RedisJobQueue(QueueFront):
    """`JobQueue` over taskiq + Redis Streams; start `svd-bot worker` on each GPU."""

    def __init__(
        self,
        *,
        redis_url: str,
        output_dir: Path,
        reclaim_seconds: float,
        keys: Keys | None = None,
        queue: FairQueue | None = None,
        eta: EtaEstimator | None = None,
        journal: Journal | None = None,
        metrics: Metrics | None = None,
        data_ttl_seconds: float = 24 * 3600,
        tick_seconds: float = 1.0,
        outage_notice_seconds: float = 10.0,
        unclaimed_seconds: float = 120.0,
        logger: logging.Logger | None = None,
    ) -> None:
        """`outage_notice_seconds`: how long Redis may be unreachable before members with a clip
        are told it is on hold (a restart of a second or two goes unremarked).
        `unclaimed_seconds`: how long a job handed over may go untaken by an idle worker before
        its message is taken for lost (Redis restarted without its data) and sent again."""
        super().__init__(
            queue=queue,
            eta=eta,
            journal=journal,
            metrics=metrics,
            logger=logger if logger is not None else logging.getLogger("generation.remote"),
        )
        self._url = redis_url
        self._keys = keys if keys is not None else Keys()
        self._output_dir = output_dir
        self._reclaim = reclaim_seconds
        self._ttl = int(data_ttl_seconds)
        self._tick_seconds = tick_seconds
        self._redis: Redis | None = None
        self._bulk: Redis | None = None  # pictures and clips (see `connect`)
        self._broker: JobStreamBroker | None = None
        self._workers: list[WorkerInfo] = []
        # Whether any worker was live at the last tick (None before the first).
        self._connected: bool | None = None
        self._frames: dict[str, int] = {}
        # Handed to a worker and not finished yet.
        self._in_flight: set[str] = set()
        # In flight, with their outcome being taken in (fetching the clip) right now.
        self._ending: set[str] = set()
        # Results that could not be taken in (see `_reconcile`), by job: how many ticks running.
        self._untaken: dict[str, int] = {}
        # In flight: when a worker's claim on the job was last seen (none yet: not in here).
        self._claimed_at: dict[str, float] = {}
        # In flight: when its message last went on the stream.
        self._sent_at: dict[str, float] = {}
        self._outage_notice = outage_notice_seconds
        self._unclaimed = unclaimed_seconds
        # Since when Redis has not answered (None: it answers).
        self._unreachable_since: float | None = None
        # Set while nothing is in flight (what a graceful stop waits for).
        self._all_back = asyncio.Event()
        self._all_back.set()
        self._dispatching = asyncio.Lock()
        self._group_made = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Asks the background loops to end (stop()); cancelling Redis calls is not reliable.
        self._halt = False

    # -- the JobQueue interface ----------------------------------------------------------------

    @property
    def workers(self) -> list[WorkerInfo]:
        """The live workers as of the last tick."""
        return list(self._workers)

    async def start(self) -> None:
        if self._stopping:
            raise QueueClosed()
        if self._tasks:
            return
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._redis = connect(self._url)
        self._bulk = connect(self._url, bulk=True)
        self._broker = make_broker(self._url, self._keys, reclaim_seconds=self._reclaim)
        self._tasks = [
            asyncio.create_task(self._listen(), name="svd-remote-events"),
            asyncio.create_task(self._tick_loop(), name="svd-remote-dispatch"),
        ]

    async def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return False
        if await self._cancel_waiting(job):
            return True
        job.log.info("cancel requested while %s", job.phase)
        job.request_stop("cancelled")
        redis = self._client()
        await redis.set(self._keys.cancel(job_id), b"1", ex=self._ttl)
        if not await redis.exists(self._keys.claim(job_id), self._keys.result(job_id)):
            # No worker has started it: the one that gets the message sees the flag and skips it.
            await self._finish(
                job, EventKind.CANCELLED, reason="cancelled", error=Cancelled().user_message
            )
        return True

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking jobs. Jobs already on a worker go on there: wait up to `grace_seconds` for
        them, then report them `interrupted`, so the bot picks them up again (or their stored
        result) after its restart."""
        self._log.info(
            "stopping: %s waiting, %s on workers, grace %.1fs",
            len(self._queue),
            len(self._in_flight),
            grace_seconds,
        )
        if not await self._close_line():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_back.wait(), grace_seconds)
        await self._interrupt_all()
        self._halt = True
        self._wake.set()
        _done, pending = await asyncio.wait(self._tasks, timeout=max(2 * self._tick_seconds, 2))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
        if self._broker is not None:
            await self._broker.shutdown()
        for client in (self._redis, self._bulk):
            if client is not None:
                await client.aclose()
        self._closed()

    # -- backend hooks -------------------------------------------------------------------------

    def frames_for(self, model: str | None) -> int:
        """Frames the model makes, as the workers reported it (SVD-XT's 25 before any has)."""
        return self._frames_for(model)

    def _frames_for(self, model: str | None) -> int:
        if model is None:
            model = next(iter(self._frames), None)
        return self._frames.get(model or "", DEFAULT_FRAMES)

    @property
    def _parallel(self) -> int:
        return max(1, self._serving)

    @property
    def _serving(self) -> int:
        """Workers that take clips now: not those still loading or whose model failed."""
        return sum(worker.state in SERVING for worker in self._workers)

    def _queued(self, job: TrackedJob) -> None:
        if self._connected is False:
            self._announce_stalled([job])
        self._wake.set()

    def _finished(self, job: TrackedJob) -> None:
        self._in_flight.discard(job.job_id)
        self._claimed_at.pop(job.job_id, None)
        self._sent_at.pop(job.job_id, None)
        if not self._in_flight:
            self._all_back.set()
        self._wake.set()

    # -- dispatch ------------------------------------------------------------------------------

    def _client(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("RedisJobQueue.start() was not called")
        return self._redis

    def _bulk_client(self) -> Redis:
        if self._bulk is None:
            raise RuntimeError("RedisJobQueue.start() was not called")
        return self._bulk

    async def _tick_loop(self) -> None:
        while not self._halt:
            honour_cancel()
            try:
                await self._tick()
                self._unreachable_since = None
            except RedisError as exc:
                self._log.warning("Redis is unreachable (%s); retrying", exc)
                self._redis_away()
            except Exception:
                self._log.exception("dispatch tick failed")
            # asyncio.timeout, not wait_for: on 3.11, wait_for can swallow the cancel that stop()
            # sends when the event is set at the same moment, and the loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def _tick(self) -> None:
        redis = self._client()
        if not self._group_made:
            # Only the bot's role here: create the consumer group so no message goes unseen.
            # On a tick, not in start(): a Redis not answering yet (starting with the bot,
            # loading its data) is waited for like one that goes away later.
            assert self._broker is not None
            await self._broker.startup()
            self._group_made = True
        self._workers = await live_workers(redis, self._keys)
        for worker in self._workers:
            self._frames.update(worker.frames or {})
        if not self._stopping:
            self._state = "ready" if self._workers else "no_workers"
            self._note_workers(bool(self._workers))
        await self._reconcile()
        await self._dispatch()

    def _redis_away(self) -> None:
        """Without Redis no worker can be reached: past a short blip, say so as when the last
        worker goes (the members are told their clips are on hold); the first tick that reaches
        Redis again tells them it goes on."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif now - self._unreachable_since >= self._outage_notice and not self._stopping:
            self._workers = []
            self._state = "no_workers"
            self._note_workers(False)

    def _note_workers(self, connected: bool) -> None:
        """When the last worker goes, tell every member with a clip in the line or in flight that
        it is on hold; when one is back, tell the waiting ones their places again, and those in
        flight that a worker will take theirs up (it may first wait out the reclaim time)."""
        was = self._connected
        if connected == was:
            return
        self._connected = connected
        self._on_hold = not connected
        if not connected:
            held = sum(not job.finished for job in self._jobs.values())
            self._log.warning("no GPU worker is connected; %d jobs on hold", held)
            self._announce_stalled()
            return
        self._log.info("%d GPU workers connected", len(self._workers))
        if was is False:
            flying = [self._jobs[i] for i in sorted(self._in_flight) if i in self._jobs]
            self._announce_stalled(flying, reason="resuming")
        self._announce_positions()

    async def _reconcile(self) -> None:
        """Finish jobs whose stored result we have not seen on pub/sub, and hand on again those
        whose worker died."""
        ids = sorted(self._in_flight)
        if not ids:
            return
        redis = self._client()
        stored = await redis.mget([self._keys.result(i) for i in ids])
        for job_id, raw in zip(ids, stored, strict=True):
            if raw is not None:
                await self._take_result(job_id, raw)
        await self._rescue(ids, [raw is not None for raw in stored])

    async def _take_result(self, job_id: str, raw: bytes | str) -> None:
        """One stored result; its failure is its own. Raised, it ended the tick, and the next
        one met it again (for as long as the result is kept): no clip was sent to any worker,
        nor any lost worker's job rescued. A failure that lasts fails the job, refunded."""
        try:
            await self._on_message(raw)
        except RedisError as exc:  # the clip's transfer cut short: the next tick tries again
            self._log.warning("[job %s] could not take its result in yet: %s", job_id, exc)
            return
        except Exception:
            tries = self._untaken[job_id] = self._untaken.get(job_id, 0) + 1
            self._log.exception("[job %s] could not take its result in (try %d)", job_id, tries)
            job = self._jobs.get(job_id)
            if tries >= RESULT_TRIES and job is not None and not job.finished:
                await self._finish(job, EventKind.FAILED, reason="error", error=GENERIC_ERROR)
            else:
                return
        self._untaken.pop(job_id, None)

    async def _rescue(self, ids: list[str], ended: list[bool]) -> None:
        """A worker killed mid-clip (SIGKILL, a lost machine) stops renewing its claim. Its
        message would wait for the reclaim timeout (minutes, longer than any clip), and the job,
        counted in flight, would keep a free GPU idle all that time: once the claim has been gone
        for a whole lease, the job goes on the stream again for a free worker. A second message
        is harmless: whoever reads it after the job is done finds the stored result."""
        now = time.monotonic()
        claims = await self._client().mget([self._keys.claim(i) for i in ids])
        for job_id, claim, done in zip(ids, claims, ended, strict=True):
            if done or job_id not in self._in_flight:
                continue
            if claim is not None:
                self._claimed_at[job_id] = now
                continue
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                continue
            if job.phase == "encoding":
                # No result and no claim: its worker handed it back (stopping) or died while
                # encoding it, and it will hold a GPU again before it is done.
                job.phase = "generating"
            seen = self._claimed_at.get(job_id)
            if seen is not None and now - seen >= CLAIM_SECONDS:
                job.log.warning("its worker stopped renewing the claim; handing it on again")
                del self._claimed_at[job_id]
                await self._kick(job)
            elif (
                seen is None
                and now - self._sent_at.get(job_id, now) >= self._unclaimed
                and any(worker.state == "ready" for worker in self._workers)
            ):
                # An idle worker would have taken it long ago: the message is gone.
                job.log.warning("no worker took it up; sending its message again")
                await self._kick(job)

    async def _dispatch(self) -> None:
        async with self._dispatching:
            while not self._stopping and self._on_gpus() < self._serving:
                queued = self._queue.take_nowait()
                if queued is None:
                    return
                job = self._jobs[queued.job_id]
                self._in_flight.add(job.job_id)
                self._all_back.clear()
                try:
                    await self._send(job)
                except RedisError as exc:
                    # Redis went away (a restart): the job waits in its place for it to be back.
                    job.log.warning("could not hand the job over (%s); it waits its turn", exc)
                    self._in_flight.discard(job.job_id)
                    if not self._in_flight:
                        self._all_back.set()
                    job.phase = "waiting"
                    self._queue.give_back(job.job_id)
                    return
                except Exception as exc:  # the picture is gone
                    await self._fail(job, exc, "dispatch")
                self._announce_positions()

    def _on_gpus(self) -> int:
        """Jobs in flight that hold a GPU: not those whose clip is being encoded (CPU work), so
        a worker gets its next clip while it encodes the last one."""
        return sum(
            1
            for job_id in self._in_flight
            if (job := self._jobs.get(job_id)) is None or job.phase != "encoding"
        )

    async def _send(self, job: TrackedJob) -> None:
        redis, keys, request = self._client(), self._keys, job.request
        job.begin(time.monotonic())
        job.expected_seconds = self.eta.estimate(job.queued.cost_units)
        stored = await redis.get(keys.result(job.job_id))
        if stored is not None:
            job.log.info("already finished on a worker; using its result")
            await self._on_message(stored)
            return
        if await redis.exists(keys.claim(job.job_id)):
            job.log.info("already running on a worker; following it")
            # Seen claimed: should that worker be dead, its lapsed claim hands the job on
            # (unseen, the job would wait for the stream's reclaim timeout instead).
            self._claimed_at[job.job_id] = time.monotonic()
            return
        try:
            picture = await asyncio.to_thread(request.input_path.read_bytes)
        except OSError as exc:
            raise GenerationFailed(INPUT_ERROR, reason="input") from exc
        await self._bulk_client().set(keys.input(job.job_id), picture, ex=self._ttl)
        await self._kick(job, picture_sent=True)
        job.log.info("handed to the workers (%d live)", len(self._workers))

    async def _kick(self, job: TrackedJob, *, picture_sent: bool = False) -> None:
        """Put the job's message on the stream, with its picture in Redis: sent again, the
        job's picture may be gone with Redis's data (the very loss that lost the message, or
        its last second of writes), and the worker would fail a clip whose picture is here."""
        self._sent_at[job.job_id] = time.monotonic()
        job.phase = "generating"  # sent again after its worker died encoding it: a GPU's work
        if not picture_sent and not await self._client().exists(self._keys.input(job.job_id)):
            try:
                picture = await asyncio.to_thread(job.request.input_path.read_bytes)
            except OSError as exc:  # the worker's "could not be read" says so to the member
                job.log.warning("its picture is gone from Redis and from here: %s", exc)
            else:
                await self._bulk_client().set(
                    self._keys.input(job.job_id), picture, ex=self._ttl, nx=True
                )
        await self._post(job)

    async def _post(self, job: TrackedJob) -> None:
        request = job.request
        assert self._broker is not None  # set with the client in start()
        kicker: Any = AsyncKicker(TASK_NAME, self._broker, {})
        await kicker.kiq(
            job_id=job.job_id,
            options=request.options.to_dict(),
            max_bytes=request.max_bytes,
            user_id=request.user_id,
            group=request.group,
        )

    # -- events from the workers ---------------------------------------------------------------

    async def _listen(self) -> None:
        """Pub/sub from the workers, reconnecting when Redis goes away."""
        while not self._halt:
            honour_cancel()
            try:
                async with self._client().pubsub() as pubsub:
                    await pubsub.subscribe(self._keys.events)
                    while not self._halt:
                        honour_cancel()
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._tick_seconds
                        )
                        if message is not None and message.get("type") == "message":
                            await self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self._log.warning("lost the event channel (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
            except Exception:
                self._log.exception("event listener failed; restarting it")
                await asyncio.sleep(1.0)

    async def _on_message(self, raw: bytes | str) -> None:
        try:
            event = event_from_json(raw)
        except ValueError:
            self._log.warning("ignoring a malformed event from a worker")
            return
        job = self._jobs.get(event.job_id)
        if job is None or job.finished or job.job_id not in self._in_flight:
            return  # another bot's, or a duplicate of what we already have
        if event.kind in (EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED):
            # Pub/sub and the tick's look at stored results can bring the same outcome at once.
            if job.job_id in self._ending:
                return
            self._ending.add(job.job_id)
            try:
                if event.kind is EventKind.DONE and job.stop_reason == "cancelled":
                    # The member was told "cancelled, not charged" (the worker finished before
                    # it saw the flag): honour that, as the local queue does.
                    job.log.info("finished on a worker after it was cancelled; dropping it")
                    await self._finish(
                        job, EventKind.CANCELLED, reason="cancelled", error=Cancelled().user_message
                    )
                    with contextlib.suppress(RedisError):
                        await self._client().delete(
                            self._keys.input(job.job_id), self._keys.output(job.job_id)
                        )
                elif event.kind is EventKind.DONE:
                    await self._done(job, event)
                else:
                    await self._end(job, event)
                    # The picture is kept for a retry until the TTL; an ended job needs none.
                    with contextlib.suppress(RedisError):
                        await self._client().delete(self._keys.input(job.job_id))
            finally:
                # On an error (Redis away) the next tick tries the stored result again.
                self._ending.discard(job.job_id)
            return
        event = replace(event, user_id=job.request.user_id)
        match event.kind:
            case EventKind.STARTED:
                job.begin(time.monotonic())
                job.expected_seconds = event.eta_seconds or job.expected_seconds
                await self._record(job, event)
            case EventKind.STEP:
                job.stepped(event.step or 0, event.total or 0, time.monotonic())
                await self._record(job, replace(event, eta_seconds=self._remaining(job)))
            case EventKind.ENCODING:
                job.phase = "encoding"
                self._wake.set()  # its GPU is free for the next clip
                await self._record(job, event)
            case EventKind.LOADING | EventKind.DECODING:
                if event.kind is EventKind.LOADING:
                    job.loading_model(time.monotonic())
                await self._record(job, event)
            case _:
                pass  # queued / position are the worker's own line; interrupted is requeued

    async def _done(self, job: TrackedJob, event: JobEvent) -> None:
        redis, keys = self._client(), self._keys
        data = await self._bulk_client().get(keys.output(job.job_id))
        if not isinstance(data, bytes) or event.clip is None:
            job.log.error("the worker reported done but the clip is not in Redis")
            await self._finish(job, EventKind.FAILED, reason="error", error=LOST_CLIP_ERROR)
            return
        path = self._output_dir / f"{job.job_id}.{event.clip.format}"
        try:
            await asyncio.to_thread(_write, path, data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise  # the next tick tries the stored result again
            # Tried again on every tick, it would hold up the line behind it until it expired.
            job.log.error("no room on this disk for the clip from the worker: %s", exc)
            await self._finish(job, EventKind.FAILED, reason="disk", error=DISK_FULL_MESSAGE)
            with contextlib.suppress(RedisError):
                await redis.delete(keys.input(job.job_id), keys.output(job.job_id))
            return
        if job.finished:
            # Interrupted by a stop while the clip came over: kept in Redis, for the restart,
            # which finds the result and takes the clip in then; not here, where no one would.
            await asyncio.to_thread(path.unlink, True)
            return
        if job.stop_reason == "cancelled":
            # Cancelled meanwhile, its member told "not charged": honoured, as before the wait.
            await asyncio.to_thread(path.unlink, True)
            await self._finish(
                job, EventKind.CANCELLED, reason="cancelled", error=Cancelled().user_message
            )
        else:
            if event.seconds is not None and event.cost_units:
                self.eta.record_duration(event.cost_units, event.seconds)
            await self._end(job, replace(event, clip=replace(event.clip, path=path)))
        with contextlib.suppress(RedisError):
            await redis.delete(keys.input(job.job_id), keys.output(job.job_id))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["GENERIC_ERROR", "LOST_CLIP_ERROR", "RedisJobQueue", "WorkerInfo"]

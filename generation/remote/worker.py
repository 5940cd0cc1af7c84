"""`RemoteWorker`: one GPU's process in a scaled-out setup (`svd-bot worker`).

It runs the same runtime as the embedded queue (`LocalJobQueue`: engine thread, time limit, OOM
handling, encoders) and feeds it from taskiq, one job on the GPU at a time: the next message is
read once the last clip is being encoded (`Room`), so the GPU makes the next clip while the CPU
encodes the last one, as in the embedded queue. For each message:

1. A stored result means the job ran already (at-least-once delivery, or the bot submitting it
   again after a restart): publish that result again and acknowledge. Nothing runs twice.
2. Otherwise take the job's claim, a key with a short lease that this worker renews while it
   works. A claim held by another live worker means the job is running there: wait for it to
   end, then go back to 1. A claim whose holder died expires within one lease.
3. A cancel flag set before the start ends the job at once; one set later is seen within
   `cancel_poll_seconds` and stops the engine at its next step.
4. The outcome is stored (the clip under `output`, then the terminal event under `result`)
   BEFORE it is published and the message acknowledged, so a crash at any point leaves either a
   message that will be redelivered or a result that answers it.

On shutdown the job in flight is put back on the stream for another worker, not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq import AckableMessage, Context, TaskiqDepends
from taskiq.acks import AcknowledgeType
from taskiq.exceptions import NoResultError
from taskiq.receiver import Receiver

from generation.errors import DISK_FULL_MESSAGE, Cancelled, GenerationError, is_disk_full
from generation.front import INPUT_ERROR, JobLog
from generation.jobs import EventKind, JobEvent, JobRequest, valid_job_id
from generation.options import AnimateOptions
from generation.queue import QueueClosed
from generation.remote.broker import (
    SERVING,
    JobStreamBroker,
    Outage,
    Room,
    WorkerInfo,
    connect,
    honour_cancel,
    live_workers,
    make_broker,
)
from generation.remote.wire import CLAIM_SECONDS, TASK_NAME, Keys, event_to_json
from generation.worker import LocalJobQueue

log = logging.getLogger("generation.remote.worker")


T = TypeVar("T")


class ModelNotLoaded(GenerationError):
    """The worker's model failed to load: it takes no clips, and exits for its supervisor to
    start it again (a full disk or a hub outage may have passed by then)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(
            f"the model could not be loaded ({cause}); this worker takes no clips. "
            "Fix the cause (see the log) and start it again."
        )


GPU_FAILED_MESSAGE = (
    "The GPU failed while making this clip. You were not charged; please try again."
)


WORKER_ERROR = (
    "Something went wrong on the GPU worker making this clip. You were not charged; "
    "please try again."
)


# The claim, renewed only while it is this worker's or no one's (lapsed), in one step.
_RENEW_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _failed(job_id: str, user_id: int, exc: Exception) -> JobEvent:
    """A job this worker could not run: failed (the bot refunds it), with the error's own
    message for the member when it has one."""
    message = exc.user_message if isinstance(exc, GenerationError) else WORKER_ERROR
    return JobEvent(job_id, EventKind.FAILED, user_id=user_id, reason="error", error=message)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RemoteWorker:
    def __init__(
        self,
        runtime: LocalJobQueue,
        *,
        redis_url: str,
        work_dir: Path,
        reclaim_seconds: float,
        keys: Keys | None = None,
        name: str | None = None,
        models: tuple[str, ...] = (),
        data_ttl_seconds: float = 24 * 3600,
        heartbeat_seconds: float = 2.0,
        claim_seconds: float = CLAIM_SECONDS,
        cancel_poll_seconds: float = 0.5,
        grace_seconds: float = 60.0,
        disk_pause_seconds: float = 60.0,
    ) -> None:
        self._runtime = runtime
        self._url = redis_url
        self._work_dir = work_dir
        self._reclaim = reclaim_seconds
        self._keys = keys if keys is not None else Keys()
        self.name = name or default_worker_name()
        self._models = models
        self._ttl = int(data_ttl_seconds)
        self._heartbeat = heartbeat_seconds
        self._claim_ms = int(claim_seconds * 1000)
        self._poll = cancel_poll_seconds
        self._grace = grace_seconds
        self._redis: Redis | None = None
        self._bulk: Redis | None = None  # pictures and clips (see `connect`)
        # The jobs in hand, oldest first; those handed to the runtime and not yet encoding are
        # `_on_gpu` (at most one: waiting for it or on it).
        self._held: list[str] = []
        self._on_gpu: set[str] = set()
        # Jobs whose claim another worker took while this one was cut off from Redis (see
        # `_hold`): theirs now, stopped here, and their outcome here never stored.
        self._lost: set[str] = set()
        # Its disk was full: it takes no clip before then (monotonic time).
        self._no_room_until = 0.0
        self._disk_pause = disk_pause_seconds
        self._room = Room()
        self._frames: dict[str, int] = {}
        self._stopping = False
        self.jobs_done = 0

    # -- the process ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then hand back the job in flight and leave."""
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._redis = connect(self._url)
        self._bulk = connect(self._url, bulk=True)
        broker = make_broker(
            self._url, self._keys, reclaim_seconds=self._reclaim, consumer_name=self.name
        )

        async def generate(  # taskiq registers functions, not bound methods
            job_id: str,
            options: dict[str, Any],
            max_bytes: int,
            user_id: int,
            group: int = 0,
            context: Context = TaskiqDepends(),  # noqa: B008 (taskiq injects it)
        ) -> None:
            await self.handle(job_id, options, max_bytes, user_id, group, context)

        broker.register_task(generate, task_name=TASK_NAME)
        broker.is_worker_process = True
        broker.room = self._room
        # The model loads meanwhile; the listener first waits for Redis (see _listen_when_ready).
        await self._runtime.start()
        heartbeat = asyncio.create_task(self._beat(), name="svd-worker-heartbeat")
        learn = asyncio.create_task(self._learn_frames(), name="svd-worker-frames")
        finish = asyncio.Event()
        receiver = _Receiver(
            broker,
            self._room,
            # One job making, and one for each encoder that may still be encoding.
            max_async_tasks=self._runtime.encoders + 1,
            max_prefetch=0,
            run_startup=False,
            ack_type=AcknowledgeType.MANUAL,
        )
        stopper = asyncio.create_task(stop.wait())
        # Listening starts once the model is loaded: a worker still loading (or one whose model
        # failed to load) would sit on a clip that a ready GPU could make now.
        listener = asyncio.create_task(self._listen_when_ready(broker, receiver, finish))
        try:
            await asyncio.wait({listener, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if listener.done() and (exc := listener.exception()) is not None:
                raise exc
        finally:
            log.info("worker %s stopping", self.name)
            self._stopping = True
            self._room.close()  # no read may start now: its message would be neither made nor
            finish.set()  # handed back
            # Leave the registry first, so the bot stops counting on this GPU.
            heartbeat.cancel()
            with contextlib.suppress(RedisError):
                await self._redis.delete(self._keys.worker(self.name))
            # The job in flight finishes within the grace period or is handed back (handle()).
            await self._runtime.stop(self._grace)
            # The receiver ends once the job in flight has been stored or handed back.
            await asyncio.wait({listener}, timeout=10.0)
            for task in (listener, stopper, heartbeat, learn):
                task.cancel()
            await asyncio.wait({listener, stopper, heartbeat, learn}, timeout=5.0)
            with contextlib.suppress(RedisError):
                await broker.leave_group(self._redis)
            await broker.shutdown()
            await self._redis.aclose()
            await self._bulk.aclose()

    async def _listen_when_ready(
        self, broker: JobStreamBroker, receiver: Receiver, finish: asyncio.Event
    ) -> None:
        # A worker started before Redis answers (the host boots, compose starts both at once,
        # Redis still loading its data) waits for it rather than exiting.
        outage = Outage()
        while True:
            honour_cancel()
            try:
                await broker.startup()  # makes the consumer group
                break
            except RedisError as exc:
                await outage.pause(f"worker {self.name} starting", exc)
        ready = asyncio.create_task(self._runtime.ready.wait())
        while not ready.done():
            if self._runtime.state == "load_failed":
                ready.cancel()
                cause = self._runtime.load_error
                raise ModelNotLoaded(cause.__cause__ or cause if cause else None)
            await asyncio.wait({ready}, timeout=0.2)
        log.info("worker %s listening on %s", self.name, self._keys.stream)
        await receiver.listen(finish)

    async def _beat(self) -> None:
        while True:
            honour_cancel()
            await self._say_alive()
            await asyncio.sleep(self._heartbeat)

    async def _say_alive(self) -> None:
        """Write the heartbeat: who we are, and which job we hold (read by the bot's /queue)."""
        if self._stopping:
            return
        try:
            await self._client().set(
                self._keys.worker(self.name),
                self._info().to_json(),
                px=int(self._heartbeat * 3000),
            )
        except RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _info(self) -> WorkerInfo:
        # Busy while a clip is on the GPU; one only encoding leaves the GPU free, and "ready"
        # is what the bot looks for before it sends a lost message again.
        state = self._runtime.state  # loading, stuck, ... say so whatever else holds
        if state == "ready":
            if self._on_gpu or self._runtime.stuck_job_id is not None:
                # Counted on by the bot for that clip (a clip past its time limit may still
                # hold the GPU), even while its disk is full.
                state = "busy"
            elif time.monotonic() < self._no_room_until:
                state = "disk_full"  # not counted on by the bot, nor by a worker handing on
        on_gpu = [job_id for job_id in self._held if job_id in self._on_gpu]
        job_id = on_gpu[-1] if on_gpu else (self._held[-1] if self._held else None)
        return WorkerInfo(self.name, state, job_id, dict(self._frames) or None)

    async def _learn_frames(self) -> None:
        """Frames each model makes, for the bot's estimates. Asking the engine may read a model's
        config from disk, so it runs in a thread, once, and the heartbeat just repeats it."""
        for model in self._models:
            try:
                self._frames[model] = await asyncio.to_thread(self._runtime.frames_for, model)
            except Exception:
                log.warning("could not tell how many frames %s makes", model)

    def _client(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("RemoteWorker.run() was not called")
        return self._redis

    def _bulk_client(self) -> Redis:
        if self._bulk is None:
            raise RuntimeError("RemoteWorker.run() was not called")
        return self._bulk

    # -- one job ---------------------------------------------------------------------------

    async def handle(
        self,
        job_id: str,
        options: dict[str, Any],
        max_bytes: int,
        user_id: int,
        group: int,
        context: Context,
    ) -> None:
        """The taskiq task: run one job, store its outcome, then acknowledge the message."""
        self._room.claim(str(job_id))
        if not valid_job_id(job_id):
            # Not the bot's (it makes ids of hex digits): never let it name a file to write or
            # delete. Acknowledged, so it is not sent again.
            log.error("dropping a message with a malformed job id %r", str(job_id)[:80])
            await self._retried("acknowledging a job", context.ack)
            return
        redis, keys = self._client(), self._keys
        jlog = JobLog(log, {"job_id": job_id})
        if time.monotonic() < self._no_room_until:
            # Read as this worker's disk filled: a worker with room makes it, or this one once
            # its pause is over.
            jlog.info("no room on this worker's disk for now; handed back")
            with contextlib.suppress(NoResultError):
                await self._retried("handing a job back", context.requeue)
            await self._retried("acknowledging a job", context.ack)
            return
        while True:
            stored = await self._retried("reading a result", lambda: redis.get(keys.result(job_id)))
            if stored is not None:
                jlog.info("already finished; sending its result again")
                await self._retried(
                    "publishing a result",
                    lambda: redis.publish(keys.events, stored),  # noqa: B023 (awaited here)
                )
                await self._retried("acknowledging a job", context.ack)
                return
            claimed = await self._retried(
                "claiming a job",
                lambda: redis.set(keys.claim(job_id), self.name, nx=True, px=self._claim_ms),
            )
            if claimed:
                break
            # Running on another live worker (its claim is renewed): a message reclaimed from
            # it (a model load can outlast the reclaim timeout) or sent again. Waiting here would
            # keep this GPU from other clips, while saying it is free: leave the job to that
            # worker. Should it die, its claim lapses and the bot sends the job again.
            holder = await self._retried("reading a claim", lambda: redis.get(keys.claim(job_id)))
            if holder is not None:
                who = holder.decode() if isinstance(holder, bytes) else str(holder)
                jlog.info("already being made by worker %s; leaving it to them", who)
                await self._retried("acknowledging a job", context.ack)
                return
        self._held.append(job_id)
        await self._say_alive()
        renew = asyncio.create_task(self._hold(job_id))
        try:
            try:
                request = JobRequest(
                    job_id=job_id,
                    user_id=user_id,
                    options=AnimateOptions.from_dict(options),
                    input_path=self._work_dir / f"{job_id}.png",
                    max_bytes=max_bytes,
                    group=group,
                )
                outcome = await self._run(request)
            except (RedisError, QueueClosed):
                raise  # stopping with Redis away: the message stays for another worker
            except Exception as exc:
                # Options this worker's version refuses, its folder unwritable...: the same
                # every time. Not acknowledged, the job would be sent again for ever and its
                # member never hear; failed and refunded instead.
                jlog.exception("the job could not be run on this worker")
                outcome = _failed(job_id, user_id, exc)
            if job_id in self._lost:
                jlog.warning("another worker took this clip over while Redis was away")
                if outcome is not None and outcome.clip is not None:
                    await asyncio.to_thread(outcome.clip.path.unlink, True)
                await self._retried("acknowledging a job", context.ack)
                return
            if outcome is None:  # shutting down, or no room on this disk: another worker takes it
                jlog.info("handed back for another worker")
                # Our claim goes first: a worker reading the message while it still stood would
                # leave the job to us, and acknowledge it.
                renew.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renew
                await self._release(job_id)
                with contextlib.suppress(NoResultError):
                    await self._retried("handing a job back", context.requeue)
            else:
                # The outcome must reach Redis, however long Redis is away: it is the clip.
                made = outcome
                try:
                    await self._retried("storing a result", lambda: self._store(made))
                except RedisError:
                    raise
                except Exception as exc:  # the clip could not be read back from this disk
                    jlog.exception("the clip could not be stored")
                    failed = _failed(job_id, user_id, exc)
                    await self._retried("storing a result", lambda: self._store(failed))
                    outcome = failed
                self.jobs_done += 1
                paused = time.monotonic() < self._no_room_until
                if outcome.kind is EventKind.FAILED and outcome.reason == "disk" and not paused:
                    await self._pause_for_disk(f"saving the clip of job {job_id}")
            await self._retried("acknowledging a job", context.ack)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            self._held.remove(job_id)
            self._on_gpu.discard(job_id)
            self._lost.discard(job_id)
            await self._release(job_id)
            await self._say_alive()
            # A clip past its time limit was answered, but its engine call may still hold the
            # GPU: the next message waits (the room stays closed until this returns) rather
            # than sitting here behind it while another worker is free.
            while self._runtime.stuck_job_id is not None and not self._stopping:  # noqa: ASYNC110
                await asyncio.sleep(self._poll)  # rare, and the runtime has no event for it
            request_path = self._work_dir / f"{job_id}.png"
            with contextlib.suppress(OSError):  # a folder gone (the job's failure says so)
                await asyncio.to_thread(request_path.unlink, True)

    async def _run(self, request: JobRequest) -> JobEvent | None:
        """Run the job in the local runtime, forwarding its progress; its terminal event, or
        None when it was interrupted by our shutdown."""
        redis, keys, job_id = self._client(), self._keys, request.job_id
        cancelled = await self._retried(
            "reading the cancel flag", lambda: redis.exists(keys.cancel(job_id))
        )
        if cancelled:
            return self._terminal(request, EventKind.CANCELLED, "cancelled")
        bulk = self._bulk_client()
        picture = await self._retried("reading the picture", lambda: bulk.get(keys.input(job_id)))
        if not isinstance(picture, bytes):
            return self._terminal(request, EventKind.FAILED, "input", INPUT_ERROR)
        try:
            await asyncio.to_thread(request.input_path.write_bytes, picture)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            request.input_path.unlink(missing_ok=True)
            await self._pause_for_disk(str(exc))
            if await self._another_serves():
                return None  # handed back, for a worker with room
            return self._terminal(request, EventKind.FAILED, "disk", DISK_FULL_MESSAGE)
        events = self._runtime.subscribe(job_id, fresh=True)
        try:
            self._on_gpu.add(job_id)
            await self._runtime.submit(request, resume=True)
        except QueueClosed:  # read as the worker began to stop: handed back
            return None
        async for event in events:
            if event.kind in (EventKind.QUEUED, EventKind.POSITION):
                continue  # this worker's own line of one
            if event.kind is EventKind.INTERRUPTED and event.reason == "gpu":
                # This GPU broke during the clip (the process restarts to recover): handed on,
                # a clip that breaks GPUs would take every worker down in turn.
                return self._terminal(request, EventKind.FAILED, "gpu", GPU_FAILED_MESSAGE)
            if event.kind is EventKind.INTERRUPTED:
                return None
            if event.terminal:
                return event
            if event.kind is EventKind.ENCODING:
                self._on_gpu.discard(job_id)
                self._room.free_job(job_id)  # the GPU is free for the next message
                await self._say_alive()
            try:
                await redis.publish(keys.events, event_to_json(event))
            except RedisError as exc:
                # Progress is news, not state: the clip goes on, the next step tells again.
                log.warning("[job %s] progress not sent: %s", job_id, exc)
        return None  # the runtime stopped

    @staticmethod
    def _terminal(
        request: JobRequest, kind: EventKind, reason: str, error: str | None = None
    ) -> JobEvent:
        return JobEvent(
            request.job_id,
            kind,
            user_id=request.user_id,
            reason=reason,
            error=error or Cancelled().user_message,
        )

    async def _store(self, event: JobEvent) -> None:
        """The clip first, then the result that points at it, then the news."""
        redis, keys = self._client(), self._keys
        clip = event.clip if event.kind is EventKind.DONE else None
        if clip is not None:
            data = await asyncio.to_thread(clip.path.read_bytes)
            await self._bulk_client().set(keys.output(event.job_id), data, ex=self._ttl)
        payload = event_to_json(event)
        await redis.set(keys.result(event.job_id), payload, ex=self._ttl)
        await redis.publish(keys.events, payload)
        # Only now: a try cut short by Redis is made again from the start, file included.
        if clip is not None:
            await asyncio.to_thread(clip.path.unlink, True)

    async def _retried(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` until Redis answers. A job in hand must survive a Redis restart: giving up
        would leave it to the reclaim timeout (many minutes) and another GPU's second run. Once
        the worker is stopping it gives up, and the message stays for another worker."""
        outage = Outage()
        while True:
            try:
                return await call()
            except RedisError as exc:
                if self._stopping:
                    raise
                await outage.pause(what, exc)

    async def _hold(self, job_id: str) -> None:
        """Renew the claim and watch the cancel flag while the job runs."""
        redis, keys = self._client(), self._keys
        renew_every = max(self._claim_ms / 3000, self._poll)
        since_renew = 0.0
        while True:
            await asyncio.sleep(self._poll)
            honour_cancel()
            since_renew += self._poll
            try:
                if since_renew >= renew_every:
                    if not await self._renew(job_id):
                        # Cut off from Redis past the claim's lease, the job was sent again and
                        # another worker claimed it: one of the two runs must stop, and theirs
                        # is the claim. (A plain SET took the claim back, both ran on.)
                        log.warning("[job %s] another worker took it over; stopping", job_id)
                        self._lost.add(job_id)
                        await self._runtime.cancel(job_id)
                        return
                    since_renew = 0.0
                if await redis.exists(keys.cancel(job_id)):
                    await self._runtime.cancel(job_id)
            except RedisError as exc:
                log.warning("[job %s] lost Redis while running: %s", job_id, exc)

    async def _pause_for_disk(self, detail: str) -> None:
        """This worker's disk is full: it takes no clip for a while (the next would fail the
        same way), and says so, so the bot does not count on it meanwhile."""
        self._no_room_until = time.monotonic() + self._disk_pause
        self._room.pause_until(self._no_room_until)  # an encoding clip may have opened it
        log.error(
            "worker %s: the disk is full (%s); taking no clips for %.0f s",
            self.name,
            detail,
            self._disk_pause,
        )
        await self._say_alive()

    async def _another_serves(self) -> bool:
        """Whether another worker takes clips now, to hand a clip to. With none, a clip this
        worker cannot make fails refunded: handed back, it would only come round here again."""
        try:
            workers = await live_workers(self._client(), self._keys)
        except RedisError:
            return False
        return any(w.name != self.name and w.state in SERVING for w in workers)

    async def _renew(self, job_id: str) -> bool:
        """Renew this worker's claim on the job; False when another worker holds it now."""
        renewed = await self._client().eval(
            _RENEW_CLAIM, 1, self._keys.claim(job_id), self.name, str(self._claim_ms)
        )
        return bool(renewed)

    async def _release(self, job_id: str) -> None:
        with contextlib.suppress(RedisError):
            redis = self._client()
            if await redis.get(self._keys.claim(job_id)) == self.name.encode():
                await redis.delete(self._keys.claim(job_id))


class _Receiver(Receiver):
    """taskiq's receiver, freeing the worker's `Room` when a message's handling ends: a message
    that never became a job on the GPU (already made, made elsewhere, not one of ours) must not
    keep the worker from reading the next."""

    def __init__(self, broker: JobStreamBroker, room: Room, **kwargs: Any) -> None:
        super().__init__(broker, **kwargs)
        self._room = room

    async def callback(self, message: bytes | AckableMessage, raise_err: bool = False) -> None:
        try:
            await super().callback(message, raise_err)
        finally:
            self._room.free_message(message)

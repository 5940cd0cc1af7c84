"""What the bot does, in plain Python: no discord.py types, so the whole flow is testable without
Discord.

The Discord layer (bot/cogs, bot/presenter.py) turns interactions into calls here and implements
`Presenter` to show what happens. This module owns the order of things that must not go wrong:
an image is checked before anything is charged, a reservation becomes a charge only when the clip
is delivered, and every state change is on disk before the queue moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from generation.errors import (
    Cancelled,
    DiskFull,
    GenerationError,
    InvalidOptions,
    PictureGone,
    TooManyJobs,
    is_disk_full,
)
from generation.eta import job_cost
from generation.images import ImageLimits, allowed_formats, fit_image, load_image
from generation.jobs import EventKind, JobEvent, JobQueue, JobRequest, QueueSnapshot
from generation.metrics import Metrics
from generation.options import (
    MOTION_RANGE,
    PRESETS,
    QUALITY_CACHE_INTERVALS,
    AnimateOptions,
    Fit,
)
from generation.queue import QueueClosed
from generation.results import EncodedClip
from storage.errors import JobNotFound, QuotaExceeded
from storage.jobs import JobRecord, JobState, JobStore
from storage.member_defaults import MemberDefaults, MemberDefaultsStore
from storage.quotas import QuotaStatus, QuotaStore
from storage.settings import GuildSettings, GuildSettingsStore
from storage.usage import GuildUsage

log = logging.getLogger(__name__)

Variation = Literal["reroll", "more", "less"]
# How far More / Less motion move the motion bucket.
MOTION_STEP = 40
# A job still running after a restart is retried once; the second crash fails it with a refund.
MAX_ATTEMPTS = 2
# Pictures decoded at once (each may take up to about a gigabyte at the pixel limit).
DECODES_AT_ONCE = 2
MIN_FREE_BYTES = 256 * 2**20
# How long a look at the free disk space may take before it counts as no answer.
DISK_PROBE_SECONDS = 2.0
# Discord's default per-file upload limit, for records that do not say.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Member:
    """Who is asking, as the core needs to know them."""

    guild_id: int
    user_id: int
    role_ids: tuple[int, ...] = ()
    # Manage Server or the guild's moderator role, as checked by the Discord layer at run time.
    is_moderator: bool = False


@dataclass(frozen=True)
class Origin:
    """Where a request came from: what delivery needs, even after a restart."""

    channel_id: int
    # The per-file upload limit Discord gave with the interaction: the encoder's byte budget.
    max_bytes: int
    application_id: int | None = None
    interaction_id: int | None = None
    # Lets anyone post as the bot in that channel for 15 minutes: kept out of any repr or log.
    interaction_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Accepted:
    """A request that is queued: the job, its place in line and what the member has left."""

    job: JobRecord
    queued: JobEvent
    quota: QuotaStatus
    notes: tuple[str, ...] = ()
    # No GPU worker is connected (Redis backend): the clip waits for one.
    on_hold: bool = False


@dataclass(frozen=True)
class Overview:
    """What `/help` tells a member about this server now: their clips left, what a clip gets
    with nothing typed, the line, and what the host accepts."""

    quota: QuotaStatus
    options: AnimateOptions
    defaults: MemberDefaults
    max_steps: int
    snapshot: QueueSnapshot
    image_limits: ImageLimits
    # Pillow's names of the picture formats this install reads ("PNG", "HEIF", ...).
    image_formats: tuple[str, ...]
    is_moderator: bool
    # New clips are refused for want of disk space (`disk_full()`).
    disk_full: bool = False


class Presenter(Protocol):
    """Shows a job's life to its members; the Discord layer implements it."""

    async def show(self, job: JobRecord, event: JobEvent) -> None:
        """Progress (queued, position, started, step, decoding, encoding). Must return quickly."""

    async def deliver(
        self,
        job: JobRecord,
        event: JobEvent,
        *,
        tell: bool = True,
        again: bool = False,
        posted: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Post the finished clip; True once it is posted, False when it stays on disk.
        `tell`: say so to the member when it fails (a retry does not say it again). `again`:
        an earlier try (before a restart, too) may have been posted after all: check first.
        `posted`: awaited as soon as Discord has the clip, before any tidying up (the progress
        message, repeats), so that a crash meanwhile cannot leave it to be posted again."""

    async def failed(self, job: JobRecord, message: str) -> None:
        """Tell the member the job failed, why, and that they were not charged."""

    async def cancelled(self, job: JobRecord) -> None:
        """Tell the member the job was cancelled."""

    async def interrupted(self, job: JobRecord, event: JobEvent) -> None:
        """Say the bot is shutting down and the job will go on after the restart."""


@dataclass(frozen=True)
class RedeliveryPolicy:
    """How a finished clip Discord would not take is tried again: soon at first (an outage is
    usually short), then less often, until it has been refused for `give_up_seconds`; then the
    job fails and its reservation is refunded, so it does not hold the member's quota for ever."""

    first_delay: float = 60.0
    max_delay: float = 3600.0
    give_up_seconds: float = 24 * 3600.0
    # How often the service looks for clips that are due.
    check_every: float = 15.0

    def delay(self, tries: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** max(0, tries - 1))


@dataclass(frozen=True)
class ServiceConfig:
    inputs_dir: Path
    models: Sequence[str]
    resolution: int = 1024
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # Inputs are kept this long for Re-roll / More / Less motion.
    keep_inputs_seconds: float = 7 * 24 * 3600
    # Finished jobs' records (who asked for what, where, with which settings) this long.
    keep_history_seconds: float = 90 * 24 * 3600
    redelivery: RedeliveryPolicy = field(default_factory=RedeliveryPolicy)
    # New clips are refused below this much free space where pictures and clips are kept: a
    # clip's picture (about 1 MB) and file (up to 25 MiB) and the database's growth still fit,
    # so the clips already in line finish instead of failing half-way.
    min_free_bytes: int = MIN_FREE_BYTES
    # Other folders whose disk must have that room too (the clips', the database's), should
    # they be on other disks than the pictures'.
    disk_dirs: tuple[Path, ...] = ()


def _probe_settled(probe: asyncio.Future[Any]) -> None:
    """Read a disk probe's outcome, which its waiters may have given up on."""
    if not probe.cancelled() and (exc := probe.exception()) is not None:
        log.warning("could not tell the free disk space: %s", exc)


def free_disk_bytes(path: Path) -> int | None:
    """Free space on the disk that holds `path` (or would: the folder may not exist yet);
    None when it cannot be told, and then no clip is refused for it."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


@dataclass
class _Undelivered:
    """A clip Discord has refused: since when (on the service's clock), how often, when to try
    next, and whether the member has been told."""

    since: float
    tries: int = 0
    next_at: float = 0.0
    told: bool = False


class _OnPosted:
    """What the Discord layer awaits the moment a clip is posted: records it (charged,
    delivered) the first time only, and remembers that it did."""

    def __init__(self, record: Callable[[], Awaitable[None]]) -> None:
        self._record = record
        self.recorded = False

    async def __call__(self) -> None:
        if not self.recorded:
            self.recorded = True
            await self._record()


# The Discord layer's hand-over of one clip: (job, its "done" event, what to await once it is
# posted) → whether it was posted.
HandOver = Callable[[JobRecord, JobEvent, Callable[[], Awaitable[None]]], Awaitable[bool]]


class AnimateService:
    def __init__(
        self,
        *,
        config: ServiceConfig,
        jobs: JobStore,
        quotas: QuotaStore,
        guilds: GuildSettingsStore,
        defaults: MemberDefaultsStore,
        queue: JobQueue,
        frames_for: Callable[[str | None], int],
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        free_bytes: Callable[[Path], int | None] = free_disk_bytes,
    ) -> None:
        self._config = config
        self._free_bytes = free_bytes
        self._disk_was_full = False
        self._disk_probe: asyncio.Future[list[tuple[int | None, Path]]] | None = None
        self._metrics = metrics
        self._clock = clock
        self._jobs = jobs
        self._quotas = quotas
        self._guilds = guilds
        self._defaults = defaults
        self._queue = queue
        self._frames_for = frames_for
        self._presenter: Presenter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Clips being posted now (by the pump, a retry or a hand-over): never two at once.
        self._delivering: set[str] = set()
        # Clips posted whose record could not be written (see `_delivered`): never again.
        self._posted: set[str] = set()
        # Progress messages whose id could not be written yet (see `set_progress_message`).
        self._progress_ids: dict[str, int] = {}
        self._decoding = asyncio.Semaphore(DECODES_AT_ONCE)
        self._undelivered: dict[str, _Undelivered] = {}

    # ----------------------------------------------------------------- requests

    async def build_options(
        self,
        guild_id: int,
        *,
        user_id: int | None = None,
        preset: str | None = None,
        quality: str | None = None,
        **given: Any,
    ) -> AnimateOptions:
        """Options from what the member typed, then their own defaults (`user_id`), then the
        guild's, within its step cap."""
        settings = await self._guilds.get(guild_id)
        given = {k: v for k, v in given.items() if v is not None}
        if user_id is not None:
            mine = await self._defaults.get(user_id)
            if preset is None and "motion_bucket_id" not in given:
                # Motion comes as one: a typed preset or motion replaces the member's default
                # motion whole (a default preset's noise included). A preset the host no longer
                # offers is no default at all, rather than every clip refused.
                preset = mine.preset if mine.preset in PRESETS else None
                if mine.motion_bucket_id is not None:
                    given["motion_bucket_id"] = mine.motion_bucket_id
            quality = quality or mine.quality
            for name in ("format", "fps", "ping_pong", "interpolate", "fit"):
                if getattr(mine, name) is not None:
                    given.setdefault(name, getattr(mine, name))
        if quality is not None:
            given["cache_interval"] = _cache_interval(quality)
        given.setdefault("format", settings.default_format)
        steps = given.get("num_inference_steps")
        if steps is not None and steps > settings.max_steps:
            raise InvalidOptions(
                "steps", f"This server allows at most {settings.max_steps} steps; pick fewer."
            )
        model = given.get("model")
        if model is not None and model not in self._config.models:
            raise InvalidOptions(
                "model",
                "That model is no longer available on this server. Pick one from the `model` "
                "list again, or leave it out for the server's default.",
            )
        if preset is not None:
            options = AnimateOptions.from_preset(preset, **given)
        else:
            options = AnimateOptions(**given)
        # Not typed: the default steps follow the server's cap too.
        return _within_step_cap(options, settings.max_steps)

    async def my_defaults(self, user_id: int) -> MemberDefaults:
        return await self._defaults.get(user_id)

    async def set_my_defaults(
        self, user_id: int, *, reset: bool = False, forget: Sequence[str] = (), **changes: Any
    ) -> MemberDefaults:
        """Change a member's own defaults (those given; all of them go first with `reset`, those
        named in `forget` are dropped). Checked as /animate checks its options, so a default can
        always be used."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "quality" in changes:
            _cache_interval(changes["quality"])
        AnimateOptions(**{k: v for k, v in changes.items() if k != "quality"})
        # Motion is one default, as in /animate: a preset set alone replaces a motion number
        # set earlier, and a motion set alone replaces a preset (and its noise).
        if "preset" in changes:
            changes.setdefault("motion_bucket_id", None)
        elif "motion_bucket_id" in changes:
            changes["preset"] = None
        for name in forget:
            changes.setdefault(name, None)
        return await self._defaults.update(user_id, reset=reset, **changes)

    async def submit(
        self,
        member: Member,
        image: bytes | Callable[[], Awaitable[bytes]],
        options: AnimateOptions,
        origin: Origin,
        *,
        spoiler: bool = False,
    ) -> Accepted:
        """Check the image, reserve a clip, store the input, record and queue the job;
        `image`: its bytes, or how to download them (called once the member is known to be
        able to queue, so a refusal costs no download); `spoiler`: the picture was marked as
        one, so its clip is posted as one.

        Raises a `GenerationError` (bad image, queue full...) or `QuotaExceeded`; in every such
        case nothing is charged.
        """
        job_id = uuid.uuid4().hex
        input_path = self._config.inputs_dir / f"{job_id}.png"
        # Downloading (up to 25 MiB, and a minute) and decoding a large picture (seconds, up to
        # a gigabyte): say no first to a member who could not queue it anyway (the reservation
        # checks again, atomically).
        await self._precheck(member)
        image_bytes = image if isinstance(image, bytes) else await image()
        # Off the event loop, and a few at a time, so a burst of big uploads cannot exhaust RAM.
        async with self._decoding:
            notes = await asyncio.to_thread(
                self._prepare_input, image_bytes, input_path, options.fit
            )
        return await self._enqueue(
            member, job_id, input_path, options, origin, notes, spoiler=spoiler
        )

    async def _precheck(self, member: Member) -> None:
        """Refuse a member who could not queue a clip now (a full queue, too many clips of
        theirs, no clips left, a full disk)."""
        await self._check_admission(member)
        status = await self._quotas.status(member.guild_id, member.user_id, member.role_ids)
        if status.limit is not None and status.remaining == 0:
            raise QuotaExceeded(status.limit, status.used, status.period, status.next_available_at)

    async def vary(
        self, member: Member, source_job_id: str, variation: Variation, origin: Origin
    ) -> Accepted:
        """Re-roll / More motion / Less motion: a new job for `member` from an earlier one."""
        source = await self._jobs.get(source_job_id)
        if source is None or not await _exists(source.input_path):
            raise PictureGone()
        options = AnimateOptions.from_dict(source.options)
        if options.model is not None and options.model not in self._config.models:
            raise GenerationError(
                "The model this clip was made with is no longer on this server. "
                "Use `/animate` with the picture again."
            )
        # The cap may have been lowered since the first clip.
        options = _within_step_cap(options, (await self._guilds.get(member.guild_id)).max_steps)
        if variation == "reroll":
            options = replace(options, seed=None)
        else:
            motion = moved_motion(options.motion_bucket_id, variation)
            if motion == options.motion_bucket_id:
                # The same motion again would cost a clip for what Re-roll already offers.
                most = "most" if variation == "more" else "least"
                raise GenerationError(
                    f"This clip already has the {most} motion there is ({motion}). "
                    "Use Re-roll for a different take; nothing was charged."
                )
            options = replace(options, motion_bucket_id=motion, seed=None, preset=None)
        await self._check_disk()  # before the picture is copied onto that disk
        job_id = uuid.uuid4().hex
        input_path = self._config.inputs_dir / f"{job_id}.png"
        try:
            await asyncio.to_thread(_copy_file, Path(source.input_path or ""), input_path)
        except OSError as exc:
            input_path.unlink(missing_ok=True)  # a partial copy
            if is_disk_full(exc):
                log.error("copying the picture for a new clip: %s", exc)
                raise DiskFull(f"copying the picture to {input_path}: {exc}") from exc
            raise
        return await self._enqueue(
            member, job_id, input_path, options, origin, (), spoiler=source.spoiler
        )

    async def _check_admission(self, member: Member) -> None:
        await self._check_disk()
        if self._queue.snapshot().state == "failed":
            # The GPU worker stopped on a bug of ours: nothing is made until a restart (which
            # keeps the clips in line), so a new clip would only wait, its quota held.
            raise GenerationError(_WORKER_DOWN_MESSAGE)
        try:
            self._queue.check_admission(member.user_id)
        except TooManyJobs as exc:
            # One GPU, so the cap counts a member's clips in every server; say so when some are
            # elsewhere, or /queue here would show fewer than the message claims.
            jobs = await self._jobs.active_for_user(member.guild_id, member.user_id)
            here = sum(job.state in _IN_QUEUE for job in jobs)
            if here >= exc.active:
                raise
            raise TooManyJobs(exc.active, exc.limit, elsewhere=exc.active - here) from None

    async def disk_full(self) -> str | None:
        """Why new clips are refused for want of disk space (for the log), or None when there
        is room, or no answer. A statvfs in a thread, one at a time and waited for briefly: a
        hung network disk must stall neither the loop nor, thread by thread, its executor."""
        folders = (self._config.inputs_dir, *self._config.disk_dirs)
        if self._disk_probe is None or self._disk_probe.done():
            self._disk_probe = asyncio.ensure_future(
                asyncio.to_thread(lambda: [(self._free_bytes(f), f) for f in folders])
            )
            self._disk_probe.add_done_callback(_probe_settled)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
            async with asyncio.timeout(DISK_PROBE_SECONDS):
                found = await asyncio.shield(self._disk_probe)
        except TimeoutError:
            return None  # no answer: no clip is refused for it
        known = [(free, folder) for free, folder in found if free is not None]
        free, folder = min(known, key=lambda pair: pair[0]) if known else (None, None)
        if free is None or free >= self._config.min_free_bytes:
            if self._disk_was_full:
                log.info("disk space is back: new clips are taken again")
            self._disk_was_full = False
            return None
        mib = 2**20
        detail = (
            f"{free / mib:.0f} MiB free where {folder} is, under the "
            f"{self._config.min_free_bytes / mib:.0f} MiB kept free for the clips in line"
        )
        if not self._disk_was_full:  # once, not for each refusal or look at the status
            log.error("new clips are refused: %s; free some space on that disk", detail)
        self._disk_was_full = True
        return detail

    async def _check_disk(self) -> None:
        detail = await self.disk_full()
        if detail is not None:
            raise DiskFull(detail)

    def _prepare_input(self, data: bytes, path: Path, fit: Fit) -> tuple[str, ...]:
        loaded = load_image(data, self._config.image_limits)
        fitted = fit_image(loaded.image, self._config.resolution, fit)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fitted.save(path, format="PNG")
        except OSError as exc:
            if is_disk_full(exc):
                path.unlink(missing_ok=True)  # a partial file
                log.error("saving the picture for a new clip: %s", exc)
                raise DiskFull(f"saving the picture to {path}: {exc}") from exc
            raise
        return loaded.notes

    async def _enqueue(
        self,
        member: Member,
        job_id: str,
        input_path: Path,
        options: AnimateOptions,
        origin: Origin,
        notes: tuple[str, ...],
        *,
        spoiler: bool,
    ) -> Accepted:
        """Reserve, record and queue the job whose picture is at `input_path`. Until it is
        queued, any failure removes the picture; once it is, the picture is the job's."""
        try:
            record, queued, quota = await self._reserve_and_queue(
                member, job_id, input_path, options, origin, spoiler=spoiler
            )
        except BaseException:
            # Inline, not in a thread: a cancelled task must not be left awaiting its clean-up.
            input_path.unlink(missing_ok=True)  # noqa: ASYNC240
            raise
        try:
            stored = await self._jobs.get(job_id)
        except Exception:
            # Queued: it will be made whatever this read says, and the record as written serves.
            log.warning("could not read the job back", exc_info=True, extra={"job_id": job_id})
            stored = None
        state = self._queue.snapshot().state
        on_hold = state == "no_workers"
        if state == "loading":
            # The wait estimate counts clips only; loading (and compiling) comes first.
            notes = (*notes, _LOADING_NOTE)
        elif state == "stuck":
            notes = (*notes, _RESTARTING_NOTE)  # the estimate knows nothing of the restart
        return Accepted(
            job=stored or record, queued=queued, quota=quota, notes=notes, on_hold=on_hold
        )

    async def _reserve_and_queue(
        self,
        member: Member,
        job_id: str,
        input_path: Path,
        options: AnimateOptions,
        origin: Origin,
        *,
        spoiler: bool,
    ) -> tuple[JobRecord, JobEvent, QuotaStatus]:
        # Fix the seed now so the record (and a retry after a restart) reproduces the same clip.
        options = options.with_seed(options.seed)
        # A full queue or too many clips of this member's: refuse before anything is reserved.
        await self._check_admission(member)
        # Before the reservation too: it asks the engine about the model, which may refuse it.
        cost_units = self._cost(options)
        quota = await self._quotas.reserve(member.guild_id, member.user_id, member.role_ids, job_id)
        record = JobRecord(
            job_id=job_id,
            guild_id=member.guild_id,
            channel_id=origin.channel_id,
            user_id=member.user_id,
            application_id=origin.application_id,
            interaction_id=origin.interaction_id,
            interaction_token=origin.interaction_token,
            options=options.to_dict(),
            model=options.model or self._config.models[0],
            seed=options.seed,
            input_path=str(input_path),
            max_bytes=origin.max_bytes,
            cost_units=cost_units,
            spoiler=spoiler,
        )
        try:
            await self._jobs.create(record)
            queued = await self._queue.submit(self._request(record))
        except BaseException as exc:
            message = getattr(exc, "user_message", "The request could not be queued.")
            # Failed first, then refunded: the other way round, a crash (or a failed write)
            # between the two left a queued job with a refunded reservation, which the restart
            # would make, and deliver, for free.
            try:
                await self._jobs.set_state(job_id, JobState.FAILED, error=message)
            except JobNotFound:
                pass  # never written: nothing to resume
            except Exception:
                log.exception("could not mark the job failed", extra={"job_id": job_id})
            await self._quotas.refund(job_id)
            raise
        return record, queued, quota

    def _cost(self, options: AnimateOptions) -> int:
        # The queue's own measure, so the durations stored with it seed its estimates.
        return job_cost(options, self._frames_for(options.model))

    @staticmethod
    def _request(record: JobRecord) -> JobRequest:
        return JobRequest(
            job_id=record.job_id,
            user_id=record.user_id,
            options=AnimateOptions.from_dict(record.options),
            input_path=Path(record.input_path or ""),
            max_bytes=record.max_bytes or DEFAULT_MAX_BYTES,
            group=record.guild_id,
        )

    @property
    def quotas(self) -> QuotaStore:
        return self._quotas

    @property
    def guilds(self) -> GuildSettingsStore:
        return self._guilds

    @property
    def history_days(self) -> int:
        """How many days finished clips' records are kept (KEEP_HISTORY_DAYS)."""
        return round(self._config.keep_history_seconds / 86400)

    async def usage(self, guild_id: int, days: int, now: datetime | None = None) -> GuildUsage:
        """The guild's clips asked for in the last `days` days (history is kept
        KEEP_HISTORY_DAYS, so a longer span reads only what is left)."""
        since = (now or datetime.now(UTC)) - timedelta(days=days)
        return await self._jobs.usage(guild_id, since)

    # ------------------------------------------------------------ member views

    async def cancel(self, member: Member, job_id: str | None = None) -> list[JobRecord]:
        """Cancel one job (a button) or all of the member's active ones (`/cancel`).

        A job may be cancelled by its owner or by a moderator of its guild."""
        if job_id is not None:
            job = await self._jobs.get(job_id)
            if job is None or job.guild_id != member.guild_id:
                return []
            if job.user_id != member.user_id and not member.is_moderator:
                raise GenerationError(
                    "Only the member who asked for this clip, or a moderator, can cancel it."
                )
            targets = [job]
        else:
            targets = await self._jobs.active_for_user(member.guild_id, member.user_id)
        cancelled = []
        for job in targets:
            # Encoding too: the worker stops it there as well, and nothing is charged.
            active = (JobState.QUEUED, JobState.RUNNING, JobState.ENCODING)
            if job.state not in active:
                continue
            if await self._queue.cancel(job.job_id) or await self._cancel_kept(job):
                cancelled.append(job)
                if job.user_id != member.user_id:
                    await self._moderated(member, "clip.cancel", job.job_id, job.user_id)
        return cancelled

    async def _moderated(self, member: Member, action: str, job_id: str, owner: int) -> None:
        try:
            await self._quotas.record_moderation(
                member.guild_id, member.user_id, action, owner, job_id
            )
        except Exception:  # the record of it, not the action: the action stands
            log.exception("could not record %s in the moderators' log", action)

    async def _cancel_kept(self, job: JobRecord) -> bool:
        """During a shutdown the queue has let go of its waiting clips: they are kept in the
        database for after the restart, where a cancel must reach them, or the clip is made
        (and charged) after the member was told it could not be cancelled."""
        # Stuck too: a broken GPU left its clip "running" for the restart, before the stop.
        if self._queue.snapshot().state not in ("stuck", "stopping", "stopped"):
            return False
        current = await self._jobs.get(job.job_id)
        # Running too: its "interrupted" may still be on its way to the journal.
        active = (JobState.QUEUED, JobState.RUNNING, JobState.ENCODING)
        if current is None or current.state not in active:
            return False
        await self._jobs.set_state(job.job_id, JobState.CANCELLED, error=Cancelled().user_message)
        await self._quotas.refund(job.job_id)
        if self._presenter is not None:
            with contextlib.suppress(Exception):  # the answer to the member matters more
                await self._presenter.cancelled(current)
        return True

    async def my_jobs(self, member: Member) -> tuple[list[JobRecord], QueueSnapshot]:
        jobs = await self._jobs.active_for_user(member.guild_id, member.user_id)
        # Posted, though the record still says "done" (see `_delivered`): not "posting it now".
        return [job for job in jobs if job.job_id not in self._posted], self._queue.snapshot()

    async def guild_jobs(self, guild_id: int) -> tuple[list[JobRecord], QueueSnapshot]:
        """Every clip of the guild's waiting, being made or about to be posted (for its
        moderators), with the whole queue's state."""
        jobs = [j for j in await self._jobs.unfinished(guild_id) if j.job_id not in self._posted]
        return jobs, self._queue.snapshot()

    async def quota(self, member: Member) -> QuotaStatus:
        return await self._quotas.status(member.guild_id, member.user_id, member.role_ids)

    def line(self) -> QueueSnapshot:
        """The whole queue now (every server's clips)."""
        return self._queue.snapshot()

    async def overview(self, member: Member) -> Overview:
        settings = await self._guilds.get(member.guild_id)
        return Overview(
            quota=await self.quota(member),
            options=await self.build_options(member.guild_id, user_id=member.user_id),
            defaults=await self._defaults.get(member.user_id),
            max_steps=settings.max_steps,
            snapshot=self._queue.snapshot(),
            image_limits=self._config.image_limits,
            image_formats=allowed_formats(),
            is_moderator=member.is_moderator,
            disk_full=await self.disk_full() is not None,
        )

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        return await self._guilds.get(guild_id)

    async def job(self, job_id: str) -> JobRecord | None:
        job = await self._jobs.get(job_id)
        kept = self._progress_ids.get(job_id)
        if job is not None and job.progress_message_id is None and kept is not None:
            return replace(job, progress_message_id=kept)
        return job

    async def can_delete(self, member: Member, job_id: str, named: int | None = None) -> bool:
        """The requester or a moderator. `named`: the member the clip's own message names first,
        which decides once the job's record is gone (older than KEEP_HISTORY_DAYS)."""
        job = await self._jobs.get(job_id)
        owner = named if job is None else job.user_id
        return owner == member.user_id or member.is_moderator

    async def deleted(self, member: Member, job_id: str, named: int | None = None) -> None:
        """`member` deleted the clip's message: a moderator's deletion of another member's clip
        goes in the moderators' log (`named`: whose it was, by its message, once the job's
        record is gone). Never raises: the deletion happened, whatever the log."""
        try:
            job = await self._jobs.get(job_id)
        except Exception:
            log.exception("could not record a clip's deletion in the moderators' log")
            return
        owner = named if job is None else job.user_id
        if job is not None and job.clip_url is not None:
            # /history no longer links to it.
            with contextlib.suppress(Exception):
                await self._jobs.update(job_id, clip_url=None)
        if owner is not None and owner != member.user_id:
            await self._moderated(member, "clip.delete", job_id, owner)

    async def set_progress_message(self, job_id: str, message_id: int) -> None:
        """Remember the job's public progress message. When the write fails (the database
        locked past its timeout, or full), `job` still reports it while the write is tried
        again: without it the presenter would post a second progress message and leave this
        one as it was, its Cancel button on a finished clip."""

        async def write() -> None:
            await self._jobs.update(job_id, progress_message_id=message_id)
            self._progress_ids.pop(job_id, None)

        try:
            await write()
        except sqlite3.OperationalError:
            log.warning("could not record the progress message", extra={"job_id": job_id})
            self._progress_ids[job_id] = message_id
            self._spawn(self._recorded_again(write, "a progress message", tries=5))

    async def set_clip_message(self, job_id: str, url: str) -> None:
        """Where the clip was posted, for `/history` (a DM or another channel's `/queue` too)."""
        await self._jobs.update(job_id, clip_url=url)

    async def history(self, member: Member, limit: int = 10) -> list[JobRecord]:
        """The member's latest clips in the guild, newest first."""
        return await self._jobs.history(member.guild_id, member.user_id, limit=limit)

    # ------------------------------------------------------------- the journal

    async def journal(self, event: JobEvent) -> None:
        """Every state change, written before the queue moves on (the runtime awaits this)."""
        job_id = event.job_id
        match event.kind:
            case EventKind.STARTED:
                current = await self._jobs.get(job_id)
                if current is not None and current.state in (JobState.RUNNING, JobState.ENCODING):
                    # Started again: its first GPU worker died and another took the job over.
                    await self._jobs.requeue(job_id)
                await self._jobs.increment_attempts(job_id)
                await self._jobs.set_state(job_id, JobState.RUNNING)
            case EventKind.ENCODING:
                await self._started_if_still_queued(job_id)
                await self._jobs.set_state(job_id, JobState.ENCODING)
            case EventKind.DONE:
                done: dict[str, Any] = {"duration_seconds": event.seconds}
                if event.clip is not None:
                    done["output_path"] = str(event.clip.path)
                if event.seed is not None:  # never erase the seed recorded at submit
                    done["seed"] = event.seed
                await self._started_if_still_queued(job_id)
                await self._jobs.set_state(job_id, JobState.DONE, **done)
            case EventKind.FAILED:
                await self._jobs.set_state(job_id, JobState.FAILED, error=event.error)
                # Never charged for a clip they did not get. Options were checked at submit, so
                # options the engine refuses now ("invalid") mean the host's set-up changed (a
                # GPU worker without that model), not something the member did.
                await self._quotas.refund(job_id)
            case EventKind.CANCELLED:
                await self._jobs.set_state(job_id, JobState.CANCELLED, error=event.error)
                await self._quotas.refund(job_id)
            case EventKind.INTERRUPTED:
                current = await self._jobs.get(job_id)
                if current is not None and current.state.finished:
                    return  # cancelled meanwhile (during the shutdown): it stays so
                if event.reason == "gpu":
                    # Left running, as after a crash: the restart retries it once, and fails it
                    # (refunded) if it breaks the GPU again, rather than restarting for ever.
                    return
                # Shutdown, not a crash: the retry after the restart should not use up an attempt.
                await self._jobs.requeue(job_id, refund_attempt=True)
            case _:
                pass

    async def _started_if_still_queued(self, job_id: str) -> None:
        """Record the start that a failed write lost (the database locked past its timeout, a
        full disk for a moment): without it, "done" could not follow "queued", and a finished
        clip would never be posted nor cancellable until the next restart made it again."""
        current = await self._jobs.get(job_id)
        if current is not None and current.state is JobState.QUEUED:
            await self._jobs.set_state(job_id, JobState.RUNNING)

    # --------------------------------------------------------- events → members

    async def pump(self, presenter: Presenter) -> None:
        """Forward the queue's events to the presenter until the queue stops, and meanwhile try
        again the clips Discord refused."""
        self._presenter = presenter
        retries = asyncio.create_task(self._redeliver_forever(presenter))
        try:
            async for event in self._queue.events():
                try:
                    await self._dispatch(presenter, event)
                except Exception:
                    log.exception("presenting event failed", extra={"job_id": event.job_id})
        finally:
            retries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retries

    async def _redeliver_forever(self, presenter: Presenter) -> None:
        while True:
            await asyncio.sleep(self._config.redelivery.check_every)
            try:
                await self.redeliver_due(presenter)
            except Exception:
                log.exception("retrying undelivered clips failed")

    async def redeliver_due(self, presenter: Presenter) -> int:
        """Try again each refused clip whose time has come; returns how many were started."""
        now = self._clock()
        started = 0
        for job_id, retry in list(self._undelivered.items()):
            if retry.next_at > now or job_id in self._delivering:
                continue
            job = await self._jobs.get(job_id)
            if job is None or job.state is not JobState.DONE:
                self._undelivered.pop(job_id, None)  # handed over, or failed meanwhile
                continue
            if not await _exists(job.output_path):
                self._undelivered.pop(job_id, None)
                await self._make_again(presenter, job)
                continue
            self._spawn(self._deliver(presenter, job, await _done_event(job)))
            started += 1
        return started

    async def hand_over(self, member: Member, post: HandOver) -> list[JobRecord]:
        """Give the member their finished clips that Discord refused earlier, through `post`
        (the Discord layer answers a command of theirs with them, on its fresh token; it awaits
        its third argument the moment Discord has the clip). Each one posted is charged and done
        with. Returns the jobs `post` could not post; clips being posted by someone else right
        now are left to them."""
        refused = []
        for listed in await self._jobs.active_for_user(member.guild_id, member.user_id):
            job_id = listed.job_id
            if listed.state is not JobState.DONE or job_id in self._delivering | self._posted:
                continue
            # Claimed before any await, so the pump or a retry cannot start on it meanwhile.
            self._delivering.add(job_id)
            try:
                job = await self._jobs.get(job_id)
                if job is None or job.state is not JobState.DONE:
                    continue  # posted, or given up on, since the list was read
                if not await _exists(job.output_path):
                    continue
                event = await _done_event(job)
                posted = self._on_posted(job, event)
                try:
                    handed = await post(job, event, posted)
                except Exception:
                    # One clip's failure must not cost the member the others (nor their
                    # /queue answer); posted already, it counts as posted.
                    log.exception("handing the clip over failed", extra={"job_id": job_id})
                    handed = posted.recorded
                if not handed:
                    refused.append(job)
                    if job_id not in self._undelivered:
                        # Claimed before the pump's own delivery, which then left it to us:
                        # without a retry of its own, nothing would post it before a restart.
                        now = self._clock()
                        since = now - _seconds_since_done(job)
                        self._undelivered[job_id] = _Undelivered(since=since, next_at=now)
                    continue
                await posted()  # if `post` did not say so the moment it was posted
            finally:
                self._delivering.discard(job_id)
        return refused

    async def _dispatch(self, presenter: Presenter, event: JobEvent) -> None:
        job = await self._jobs.get(event.job_id)
        if job is None:
            return
        match event.kind:
            case EventKind.DONE:
                # Uploading can take seconds: other jobs' progress must not wait for it.
                self._spawn(self._deliver(presenter, job, event))
            # Outcomes in tasks of their own, like a delivery: telling the member may wait on
            # their command's answer and Discord's retries for half a minute or more, and the
            # other jobs' events must not wait behind it. (A job's outcome is its last event.)
            case EventKind.FAILED:
                self._spawn(self._record_end(event))
                self._spawn(presenter.failed(job, event.error or "Something went wrong."))
            case EventKind.CANCELLED:
                self._spawn(self._record_end(event))
                self._spawn(presenter.cancelled(job))
            case EventKind.INTERRUPTED:
                if job.state.finished:
                    # Cancelled while the shutdown's events waited their turn: its message says
                    # so, and "it will be made after the restart" would overwrite it for good.
                    return
                await presenter.interrupted(job, event)
            case _:
                await presenter.show(job, event)

    async def _deliver(
        self, presenter: Presenter, job: JobRecord, event: JobEvent, *, again: bool = False
    ) -> None:
        if job.job_id in self._delivering | self._posted:
            return
        self._delivering.add(job.job_id)
        try:
            current = await self._jobs.get(job.job_id)
            if (
                current is not None
                and current.state in (JobState.QUEUED, JobState.RUNNING, JobState.ENCODING)
                and event.clip is not None
                and await _exists(str(event.clip.path))
            ):
                # The "done" write was lost (the database locked past its timeout, or full),
                # and with it perhaps the start's: the clip is made and on disk, so record it
                # now (the start first, see `journal`) rather than leave it unposted.
                await self._record_done(event)
                current = await self._jobs.get(job.job_id)
            if current is None or current.state is not JobState.DONE:
                return  # handed over to the member (or failed) since this event was sent
            retry = self._undelivered.get(job.job_id) or self._refused_before(current)
            told = retry is not None and retry.told
            posted = self._on_posted(current, event)
            try:
                delivered = await presenter.deliver(
                    current, event, tell=not told, again=again or retry is not None, posted=posted
                )
                told = True  # a refusal was told (or, on a retry, had been)
            except Exception:
                # Not posted, and not lost: the clip stays on disk in state "done". (Or posted,
                # and the tidying up after it failed: recorded already.)
                log.exception("delivering the clip failed", extra={"job_id": job.job_id})
                delivered = posted.recorded
            if delivered:
                await posted()  # if the presenter did not say so the moment it was posted
                return
            await self._undeliverable(presenter, current, retry, told=told)
        finally:
            self._delivering.discard(job.job_id)

    async def _record_done(self, event: JobEvent) -> None:
        """The journal's "done", again: in the delivery's own task, so no one else waits."""
        await self._recorded_again(lambda: self.journal(event), "a finished clip")

    async def _record_end(self, event: JobEvent) -> None:
        """The journal's "failed" or "cancelled", again if it was lost (the database locked
        past its timeout, or full): the member was told they were not charged, and without it
        the clip's reservation stayed held, and its row "running", until the next restart,
        which would make the clip again and charge it when posted."""

        async def settle() -> None:
            current = await self._jobs.get(event.job_id)
            if current is None or current.state in (JobState.DONE, JobState.DELIVERED):
                return
            if current.state.finished:
                # The state was written, its refund lost (a no-op when it was not).
                await self._quotas.refund(event.job_id)
            else:
                await self.journal(event)

        await self._recorded_again(settle, f"a {event.kind.value} clip")

    async def _recorded_again(
        self, record: Callable[[], Awaitable[None]], what: str, tries: int = 6
    ) -> None:
        """`record` until it works, for as long as the lock that made it fail may last (about
        ten minutes in all)."""
        for attempt in range(tries):
            try:
                await record()
                return
            except sqlite3.OperationalError:  # locked, busy, full: what passes; nothing else
                if attempt == tries - 1:
                    raise
                log.warning("recording %s failed; trying again", what, exc_info=True)
                await asyncio.sleep(self.record_retry_seconds * 2**attempt)

    def _refused_before(self, job: JobRecord) -> _Undelivered | None:
        """The retry state of a clip refused before a restart, from its record: the member was
        told then, and the next refusal waits longer."""
        if job.delivery_tries <= 0:
            return None
        since = self._clock() - _seconds_since_done(job)
        return _Undelivered(since=since, tries=job.delivery_tries, told=True)

    async def _undeliverable(
        self, presenter: Presenter, job: JobRecord, retry: _Undelivered | None, *, told: bool
    ) -> None:
        """Discord refused the clip: keep it on disk and try again later, or give up."""
        policy = self._config.redelivery
        now = self._clock()
        # Counted from when the clip was finished, so restarts do not put off giving up.
        retry = retry or _Undelivered(since=now - _seconds_since_done(job))
        retry.tries += 1
        retry.told = told
        if now - retry.since >= policy.give_up_seconds:
            self._undelivered.pop(job.job_id, None)
            log.error(
                "clip refused for %.0f h; giving up",
                policy.give_up_seconds / 3600,
                extra={"job_id": job.job_id},
            )
            await self._fail(presenter, job, _UNDELIVERABLE_MESSAGE, "undeliverable")
            return
        retry.next_at = now + policy.delay(retry.tries)
        self._undelivered[job.job_id] = retry
        await self._jobs.update(job.job_id, delivery_tries=retry.tries)
        log.warning(
            "clip not delivered (try %d); kept on disk, next try in %.0f s",
            retry.tries,
            retry.next_at - now,
            extra={"job_id": job.job_id},
        )

    def _on_posted(self, job: JobRecord, event: JobEvent) -> _OnPosted:
        async def record() -> None:
            self._undelivered.pop(job.job_id, None)
            await self._delivered(job, event)

        return _OnPosted(record)

    async def _delivered(self, job: JobRecord, event: JobEvent) -> None:
        async def record() -> None:
            await self._quotas.charge(job.job_id)  # a no-op once charged
            current = await self._jobs.get(job.job_id)
            if current is None or current.state is not JobState.DELIVERED:
                await self._jobs.set_state(job.job_id, JobState.DELIVERED)
            if job.output_path or event.clip:
                path = Path(job.output_path) if job.output_path else event.clip.path  # type: ignore[union-attr]
                await asyncio.to_thread(_remove_clip, path)

        try:
            await record()
        except Exception as exc:
            # Posted, but not recorded: the row still says "done", and the member's next /queue
            # would post it again, a restart look for it in the channel (where a DM or a /queue
            # hand-over is not found). Never again in this process, and written again while the
            # lock that stopped it may last.
            self._posted.add(job.job_id)
            log.exception("posted, but recording it failed", extra={"job_id": job.job_id})
            if isinstance(exc, sqlite3.OperationalError):
                self._spawn(self._recorded_again(record, "a posted clip"))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ restart

    # The first pause before recording a lost "done" again (doubling after each try).
    record_retry_seconds = 10.0

    async def resume(self, presenter: Presenter) -> dict[str, int]:
        """After a restart: re-queue waiting jobs in order, retry a crashed job once, and deliver
        clips that were finished but not posted. Returns counts for the log."""
        counts = {"requeued": 0, "retried": 0, "failed": 0, "redelivered": 0}
        try:
            counts["settled"] = await self._settle_reservations()
        except Exception:
            # A clean-up of what a crash left: it must not keep every waiting clip out of line.
            log.exception("could not settle the reservations a crash left")
            counts["settled"] = 0
        for job in await self._jobs.unfinished():
            try:
                outcome = await self._resume_one(presenter, job)
            except QueueClosed:
                # The bot began stopping while it started (a stop signal, a GPU it gave up on):
                # this clip stays as it is, for the next start, not failed. (The others go on:
                # a finished clip is still posted, a refunded one still closed.)
                log.info("stopping: clip %s waits for the next start", job.job_id)
                continue
            except Exception:
                # One bad record must not keep every later clip out of the queue.
                log.exception("could not resume this clip", extra={"job_id": job.job_id})
                with contextlib.suppress(Exception):
                    await self._fail(presenter, job, _UNRESUMABLE_MESSAGE, "unresumable")
                outcome = "failed"
            counts[outcome] += 1
        return counts

    async def _settle_reservations(self) -> int:
        """Settle the clips a crash left reserved for a job that had ended or was never written:
        the job and its reservation are two writes, and the process can die between them. Runs
        before new requests arrive, so no reservation is half-way through being made."""
        settled = 0
        for job_id in await self._quotas.held():
            job = await self._jobs.get(job_id)
            if job is None or job.state in (JobState.FAILED, JobState.CANCELLED):
                settled += await self._quotas.refund(job_id)
            elif job.state is JobState.DELIVERED:
                settled += await self._quotas.charge(job_id)
        return settled

    async def _resume_one(self, presenter: Presenter, job: JobRecord) -> str:
        if job.state is JobState.DONE:
            if not await _exists(job.output_path):
                return await self._make_again(presenter, job)
            # Before the restart it may have been posted with no answer back.
            event = await _done_event(job)
            self._spawn(self._deliver(presenter, job, event, again=True))
            return "redelivered"
        if await self._quotas.reservation_state(job.job_id) == "refunded":
            # Refused as it was queued (a full queue...) and refunded, but the "failed" written
            # first was lost: the member was told then. Not made now, nor a second message.
            await self._jobs.set_state(job.job_id, JobState.FAILED, error=_NOT_QUEUED_MESSAGE)
            return "failed"
        model = job.options.get("model")
        if model is not None and model not in self._config.models:
            # The host took the model off the list while the clip waited.
            await self._fail(presenter, job, _MODEL_GONE_MESSAGE, "model_gone")
            return "failed"
        outcome = "requeued"
        if job.state in (JobState.RUNNING, JobState.ENCODING):
            if job.attempts >= MAX_ATTEMPTS:
                await self._fail(presenter, job, _CRASHED_MESSAGE, "crashed")
                return "failed"
            await self._jobs.requeue(job.job_id)
            outcome = "retried"
        if not await _exists(job.input_path):
            await self._fail(presenter, job, _LOST_MESSAGE, "lost")
            return "failed"
        queued = await self._queue.submit(self._request(job), resume=True)
        await presenter.show(job, queued)
        return outcome

    async def _make_again(self, presenter: Presenter, job: JobRecord) -> str:
        """A finished clip's file is gone before it was posted (a host cleaning the disk): make
        it again from the kept picture and seed, the same clip, still charged only once posted.
        Failed and refunded when the picture is gone too or its model no longer offered."""
        model = job.options.get("model")
        if model is not None and model not in self._config.models:
            await self._fail(presenter, job, _MODEL_GONE_MESSAGE, "model_gone")
            return "failed"
        if not await _exists(job.input_path):
            await self._fail(presenter, job, _LOST_MESSAGE, "lost")
            return "failed"
        log.warning(
            "the finished clip's file is gone; making it again", extra={"job_id": job.job_id}
        )
        # A fresh start: the runs that made the lost file (a crash among them or not) are over.
        job = await self._jobs.requeue(job.job_id, fresh=True)
        queued = await self._queue.submit(self._request(job), resume=True)
        await presenter.show(job, queued)
        return "retried"

    async def _fail(self, presenter: Presenter, job: JobRecord, message: str, reason: str) -> None:
        """Fail a clip the bot gave up on itself (not the GPU's outcome, which the queue counts)."""
        await self._jobs.set_state(job.job_id, JobState.FAILED, error=message)
        await self._quotas.refund(job.job_id)
        if self._metrics is not None:
            self._metrics.given_up(reason)
        await presenter.failed(job, message)

    async def clean_up(self, now: datetime | None = None) -> int:
        """Delete the files of jobs that finished longer ago than inputs are kept for Re-roll;
        returns how many jobs' files went. Clips not yet delivered are never touched."""
        now = now or datetime.now(UTC)
        before = now - timedelta(seconds=self._config.keep_inputs_seconds)
        removed = 0
        while batch := await self._jobs.finished_with_files(before, limit=100):
            for job in batch:
                try:
                    if job.input_path:
                        await asyncio.to_thread(Path(job.input_path).unlink, True)
                    if job.output_path:
                        await asyncio.to_thread(_remove_clip, Path(job.output_path))
                except OSError as exc:
                    # Forgotten all the same: kept, this job would come first in every batch
                    # and no later file would ever go. The host has the path in the log.
                    log.error(
                        "could not delete an old job's file: %s", exc, extra={"job_id": job.job_id}
                    )
                # The interaction's token too: dead for days (it lives 15 minutes).
                await self._jobs.update(
                    job.job_id, input_path=None, output_path=None, interaction_token=None
                )
                removed += 1
        return removed

    async def forget_history(self, now: datetime | None = None) -> int:
        """Delete the records of jobs that finished longer ago than the host keeps history, their
        files gone already, and the quota bookkeeping of clips that no longer count (the store
        keeps the last week's); returns how many jobs. The moderators' audit log stays."""
        now = now or datetime.now(UTC)
        before = now - timedelta(seconds=self._config.keep_history_seconds)
        forgotten = 0
        # In batches: each holds the database's write lock for a moment only.
        while batch := await self._jobs.forget_finished(before, limit=500):
            forgotten += batch
        while await self._quotas.forget_settled(before, limit=500):
            pass
        return forgotten

    async def close(self) -> None:
        if self._disk_probe is not None:
            self._disk_probe.cancel()  # its thread may be stuck on a hung disk: not waited for
        # Together, within one limit: one at a time, each waited up to the limit, a few
        # records written again while a lock lasts (minutes, by design) would hold the stop
        # past what Docker or systemd waits. Whatever is left a restart picks up again.
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


# How long closing waits for deliveries and records still in progress.
CLOSE_WAIT_SECONDS = 20.0

# What the queue's per-member cap counts (a clip made but not yet posted is out of the queue).
_IN_QUEUE = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.ENCODING})

_CRASHED_MESSAGE = (
    "The bot stopped twice while making this clip, so I gave up on it. "
    "You were not charged; try again, perhaps with fewer steps."
)
_UNDELIVERABLE_MESSAGE = (
    "Discord refused this clip for a whole day, so I gave up on it. "
    "You were not charged; please use `/animate` again."
)
_LOADING_NOTE = (
    "The bot has just started and is still loading the model, so your clip may start later "
    "than that."
)
_RESTARTING_NOTE = (
    "The GPU stopped responding and the bot is restarting: your clip is kept and made after "
    "the restart, later than that."
)
_WORKER_DOWN_MESSAGE = (
    "My GPU worker stopped after an error, so I can't make clips until the bot is restarted "
    "(the host has been told in my log). You were not charged; please try again later."
)
_NOT_QUEUED_MESSAGE = "This clip could not be queued. You were not charged."
_UNRESUMABLE_MESSAGE = (
    "This clip could not be picked up again after the bot restarted. "
    "You were not charged; please use `/animate` again."
)
_MODEL_GONE_MESSAGE = (
    "The model this clip was to be made with is no longer on this server. "
    "You were not charged; please use `/animate` again."
)
_LOST_MESSAGE = (
    "This clip's files were lost before it could be posted. "
    "You were not charged; please use `/animate` again."
)


def moved_motion(motion: int, variation: Variation) -> int:
    """The motion bucket More / Less motion asks for, within what SVD takes."""
    low, high = MOTION_RANGE
    delta = MOTION_STEP if variation == "more" else -MOTION_STEP
    return min(high, max(low, motion + delta))


def _cache_interval(quality: str) -> int:
    if quality not in QUALITY_CACHE_INTERVALS:
        names = " or ".join(QUALITY_CACHE_INTERVALS)
        raise InvalidOptions("quality", f"`quality` must be {names}.")
    return QUALITY_CACHE_INTERVALS[quality]


def _within_step_cap(options: AnimateOptions, max_steps: int) -> AnimateOptions:
    if options.num_inference_steps <= max_steps:
        return options
    return replace(options, num_inference_steps=max_steps)


async def _done_event(job: JobRecord) -> JobEvent:
    return await asyncio.to_thread(_done_event_from_record, job)


def _seconds_since_done(job: JobRecord) -> float:
    if job.started_at is None or job.duration_seconds is None:
        return 0.0
    done = job.started_at + timedelta(seconds=job.duration_seconds)
    return max(0.0, (datetime.now(UTC) - done).total_seconds())


def _done_event_from_record(job: JobRecord) -> JobEvent:
    path = Path(job.output_path or "")
    options = AnimateOptions.from_dict(job.options)
    clip = EncodedClip(
        path=path,
        format=options.format,
        size_bytes=path.stat().st_size,
        width=0,
        height=0,
        frame_count=0,
        fps=float(options.output_fps * (2 if options.interpolate else 1)),
        seconds=0.0,
    )
    return JobEvent(
        job_id=job.job_id,
        kind=EventKind.DONE,
        user_id=job.user_id,
        clip=clip,
        seed=job.seed,
        model=job.model,
        seconds=job.duration_seconds,
    )


def _remove_clip(path: Path) -> None:
    """The clip and the smaller copies re-encoded from it after a 413 (`{stem}.{bytes}.mp4`,
    see `reencode_file`), which would otherwise stay on the disk for good."""
    path.unlink(missing_ok=True)
    for copy in path.parent.glob(f"{glob.escape(path.stem)}.*{glob.escape(path.suffix)}"):
        copy.unlink(missing_ok=True)


async def _exists(path: str | None) -> bool:
    return bool(path) and await asyncio.to_thread(Path(path or "").exists)


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())

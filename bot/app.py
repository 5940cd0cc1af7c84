"""The one place that builds everything from `Settings` and tears it down in reverse:
settings → database → engine → queue → worker → bot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import discord
import yarl

from bot.client import BotConfig, SvdBot
from bot.health import HEARTBEAT_SECONDS, write_heartbeat
from bot.service import AnimateService, ServiceConfig
from bot.settings import Settings
from generation.engine import SVDEngine
from generation.images import ImageLimits
from generation.jobs import JobEvent
from generation.metrics import Metrics, serve_metrics
from generation.models import quiet_libraries
from generation.plans import PlanSettings
from generation.queue import FairQueue
from generation.reencode import reencode_file
from generation.remote.queue import RedisJobQueue
from generation.remote.wire import Keys
from generation.results import Engine
from generation.worker import LocalJobQueue, available_cpus, encoders_for
from storage.database import Database
from storage.jobs import JobStore
from storage.member_defaults import MemberDefaultsStore
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

log = logging.getLogger(__name__)

CLEANUP_SECONDS = 3600.0


def point_discord_at(settings: Settings) -> None:
    """discord.py reads its REST base and gateway from two class attributes; other values serve
    Discord-compatible servers and our tests."""
    discord.http.Route.BASE = settings.discord_api_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=int(settings.max_image_mb * 1024 * 1024),
        max_pixels=int(settings.max_image_megapixels * 1_000_000),
    )


def build_engine(settings: Settings, *, device: str | None = None) -> SVDEngine:
    quiet_libraries()
    cache = settings.compile_cache_path
    return SVDEngine(
        settings.models,
        device=device or settings.device,
        memory_mode=settings.memory_mode,
        resolution=settings.resolution,
        local_files_only=settings.hf_offline,
        plan_settings=PlanSettings(
            fast_dtype=settings.fast_dtype,
            compile_mode=settings.compile_mode,
            compile_cache_dir=str(cache) if cache is not None else None,
        ),
    )


@dataclass
class App:
    settings: Settings
    database: Database
    # None with QUEUE_BACKEND=redis: the engines live in the workers.
    engine: Engine | None
    queue: LocalJobQueue | RedisJobQueue
    service: AnimateService
    bot: SvdBot
    # Set with METRICS_PORT; `run` serves it.
    metrics: Metrics | None = None


@contextlib.asynccontextmanager
async def build_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    edit_interval: float = 3.0,
    guild_ready_timeout: float = 2.0,
    presence_interval: float = 30.0,
    on_stuck: Callable[[str], None] | None = None,
    serve: bool = True,
) -> AsyncIterator[App]:
    """Build every part; on exit, close them in reverse order. `on_stuck(job_id)`: the engine
    thread never returned from a clip (see `LocalJobQueue`). `serve=False`: the bot only logs in
    (to register commands) and leaves the clips to the bot that serves them."""
    point_discord_at(settings)
    for folder in (settings.data_dir, settings.inputs_dir, settings.outputs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    database = await Database.open(settings.database_path)
    try:
        jobs = JobStore(database)
        guilds = GuildSettingsStore(
            database,
            default_limit=settings.default_quota,
            default_period=settings.default_quota_period,
            max_steps=settings.default_max_steps,
        )
        quotas = QuotaStore(database, settings=guilds)
        service_box: list[AnimateService] = []

        async def journal(event: JobEvent) -> None:
            await service_box[0].journal(event)

        line = FairQueue(max_per_user=settings.max_jobs_per_user, max_waiting=settings.max_waiting)
        metrics = Metrics() if settings.metrics_port is not None else None
        queue: LocalJobQueue | RedisJobQueue
        if settings.queue_backend == "redis":
            queue = RedisJobQueue(
                redis_url=settings.redis_url,
                output_dir=settings.outputs_dir,
                reclaim_seconds=settings.reclaim_seconds,
                keys=Keys(settings.redis_prefix),
                queue=line,
                journal=journal,
                metrics=metrics,
            )
            frames_for = queue.frames_for
        else:
            if engine is None:
                engine = build_engine(settings)
            queue = LocalJobQueue(
                engine,
                output_dir=settings.outputs_dir,
                queue=line,
                journal=journal,
                metrics=metrics,
                job_timeout=settings.job_timeout_seconds,
                encoders=encoders_for(available_cpus()),
                stuck_seconds=settings.stuck_restart_seconds,
                on_stuck=on_stuck,
            )
            # Not engine.frames_for: it may wait for a whole clip, and this is asked on the loop.
            frames_for = queue.frames_for
        # Waiting-time estimates start from the durations of the last runs, not a guess.
        queue.eta.seed(await jobs.recent_durations(limit=20))
        service = AnimateService(
            config=ServiceConfig(
                inputs_dir=settings.inputs_dir,
                models=settings.models,
                resolution=settings.resolution,
                image_limits=image_limits(settings),
                keep_inputs_seconds=settings.keep_files_days * 86400,
                keep_history_seconds=settings.keep_history_days * 86400,
                min_free_bytes=int(settings.min_free_disk_mb * 2**20),
                disk_dirs=(settings.outputs_dir, settings.database_path.parent),
            ),
            jobs=jobs,
            quotas=quotas,
            guilds=guilds,
            defaults=MemberDefaultsStore(database),
            queue=queue,
            frames_for=frames_for,
            metrics=metrics,
        )
        service_box.append(service)
        bot = SvdBot(
            service=service,
            config=BotConfig(
                models=settings.models,
                image_limits=image_limits(settings),
                edit_interval=edit_interval,
                guild_ready_timeout=guild_ready_timeout,
                serve=serve,
                presence_interval=presence_interval,
            ),
            reencode=reencode_file,
        )
        yield App(settings, database, engine, queue, service, bot, metrics)
    finally:
        await database.close()


class EngineStuck(Exception):
    """The engine thread never came back from a clip. A thread cannot be killed, so only a new
    process frees the GPU: `run` shuts everything else down cleanly (waiting clips are recorded
    for the retry) and raises this, and `python -m bot` exits for its supervisor to restart it."""

    def __init__(self, job_id: str) -> None:
        during = f"clip {job_id}" if job_id else "the model's load"
        super().__init__(
            f"the GPU stopped responding, or failed, during {during}; clips are kept and "
            "resume when the bot starts again"
        )
        self.job_id = job_id


class StuckWatch:
    """Turns the worker's `on_stuck` into a shutdown of `run`."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.job_id: str | None = None

    def __call__(self, job_id: str) -> None:
        self.job_id = job_id
        self._stop.set()


async def run(
    settings: Settings,
    token: str,
    *,
    stop: asyncio.Event | None = None,
    engine: Engine | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or `stop`): warm the model, connect, serve, then shut down
    in reverse, letting the job in flight finish within the grace period or recording it.
    Raises `EngineStuck`, after the same shutdown, when the engine never returned from a clip."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stuck = StuckWatch(stop)
    try:
        async with build_app(settings, engine=engine, on_stuck=stuck) as app, _serving(app):
            await app.queue.start()
            heartbeat = asyncio.create_task(_heartbeat(app, settings.data_dir / "health.json"))
            cleaner = asyncio.create_task(_clean_up(app))
            bot_task = asyncio.create_task(app.bot.start(token))
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({bot_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if bot_task.done() and (exc := bot_task.exception()) is not None:
                    raise exc
            finally:
                log.info("shutting down: finishing or recording the job in flight")
                await app.queue.stop(settings.shutdown_grace_seconds)
                await app.bot.drain()
                await app.service.close()
                await app.bot.close()
                for task in (heartbeat, cleaner, stopper, bot_task):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
    finally:
        # Even when the shutdown itself failed: the host must learn the process has to go.
        if stuck.job_id is not None:
            raise EngineStuck(stuck.job_id)


@contextlib.asynccontextmanager
async def _serving(app: App) -> AsyncIterator[None]:
    """Prometheus metrics at http://host:METRICS_PORT/metrics while the bot runs."""
    port = app.settings.metrics_port
    if app.metrics is None or port is None:
        yield
        return
    try:
        server = serve_metrics(app.metrics, port)
    except OSError as exc:
        # Metrics are a convenience: a port already taken must not keep the bot from serving.
        log.error("cannot serve metrics on METRICS_PORT=%d (%s); running without", port, exc)
        yield
        return
    log.info("serving metrics on port %d", port)
    try:
        yield
    finally:
        server.shutdown()


async def _clean_up(app: App) -> None:
    """Hourly: delete pictures and clips of long-finished jobs, so the disk does not fill, then
    the records of jobs older than the history kept, so the database does not grow for ever."""
    while True:
        # Each on its own: a file that cannot be deleted must not keep the database growing.
        try:
            removed = await app.service.clean_up()
            if removed:
                log.info("cleaned up the files of %d old jobs", removed)
        except Exception:
            log.exception("file clean-up failed")
        try:
            forgotten = await app.service.forget_history()
            if forgotten:
                log.info("forgot %d jobs older than KEEP_HISTORY_DAYS", forgotten)
        except Exception:
            log.exception("forgetting old jobs failed")
        await asyncio.sleep(CLEANUP_SECONDS)


def connected(bot: discord.Client) -> bool:
    """On the gateway now: discord.py's `is_ready` stays true while it tries to reconnect, for
    as long as an outage lasts."""
    ws = bot.ws
    return bot.is_ready() and ws is not None and bool(ws.open)


async def _heartbeat(app: App, path: Path) -> None:
    """A small file the container's health check reads: is the bot connected and the model
    ready, as of when?"""
    while True:
        ready, state = connected(app.bot), app.queue.snapshot().state
        try:
            await asyncio.to_thread(write_heartbeat, path, discord_ready=ready, queue=state)
        except Exception:
            # A full disk or a DATA_DIR the bot may not write: the health check will say the
            # heartbeat is old, and the log says why; the next beat tries again.
            log.exception("writing the heartbeat to %s failed", path)
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def sync_commands(settings: Settings, token: str, guild_id: int | None) -> list[str]:
    """Register the slash commands once, globally or for one guild (instant, for testing)."""
    # Often run beside the live bot, on its database: it must not resume that bot's clips.
    async with build_app(settings, serve=False) as app:
        bot = app.bot
        async with bot:
            await bot.login(token)
            if guild_id is not None:
                guild = discord.Object(id=guild_id)
                bot.tree.copy_global_to(guild=guild)
                synced = await bot.tree.sync(guild=guild)
            else:
                synced = await bot.tree.sync()
        return [command.name for command in synced]

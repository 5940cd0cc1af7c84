"""`svd-bot worker` (or `python -m bot worker`): one GPU worker for QUEUE_BACKEND=redis.

Builds the same engine the bot would (settings → engine → runtime) on one GPU of this machine
and serves jobs from Redis until SIGINT/SIGTERM, then hands the job in flight back within the
grace period. Nothing of Discord is needed here, nor its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from bot.settings import Settings
from generation.queue import FairQueue
from generation.remote.gpus import GpuLock, claim_gpu
from generation.remote.wire import Keys
from generation.remote.worker import RemoteWorker, default_worker_name
from generation.worker import LocalJobQueue, available_cpus, encoders_for

log = logging.getLogger(__name__)


# A worker's own files last one job (minutes); anything this old was left by a worker killed
# mid-job, or stopping with Redis away: no job outlives Redis's day-long hold on its data.
STALE_WORK_SECONDS = 24 * 3600.0


def sweep_stale_work(root: Path, older_than: float = STALE_WORK_SECONDS) -> int:
    """Delete the pictures and clips workers left under `root` (each process has a folder of
    its own, named after its host and pid, so nothing else ever would); returns how many went.
    The folders stay: an idle live worker's, empty for days, is still in use. Blocking."""
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def pick_device(settings: Settings) -> tuple[str, GpuLock | None]:
    """The device for this worker: WORKER_GPU, else the first GPU no other worker here holds."""
    import torch

    if settings.device == "cpu" or not torch.cuda.is_available():
        return settings.device, None
    if settings.worker_gpu is not None:
        return f"cuda:{settings.worker_gpu}", None
    lock = claim_gpu(settings.data_dir / "gpu-locks", torch.cuda.device_count())
    return f"cuda:{lock.index}", lock


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    from bot.app import EngineStuck, StuckWatch, build_engine

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    device, lock = pick_device(settings)
    gpus = 1
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(int(device.split(":", 1)[1]))
        # One worker per GPU: they share this host's cores (a container given one GPU sees one).
        gpus = max(1, torch.cuda.device_count())
    name = settings.worker_name or default_worker_name()
    log.info("worker %s on %s, models %s", name, device, ", ".join(settings.models))
    swept = await asyncio.to_thread(sweep_stale_work, settings.data_dir / "worker")
    if swept:
        log.info("removed %d file(s) workers killed mid-job left behind", swept)
    work_dir = settings.data_dir / "worker" / name
    stuck = StuckWatch(stop)
    runtime = LocalJobQueue(
        build_engine(settings, device=device),
        output_dir=work_dir / "outputs",
        # One job at a time; the bot already applied the caps.
        queue=FairQueue(max_per_user=1, max_waiting=1),
        job_timeout=settings.job_timeout_seconds,
        encoders=encoders_for(available_cpus() // gpus),
        stuck_seconds=settings.stuck_restart_seconds,
        on_stuck=stuck,
    )
    worker = RemoteWorker(
        runtime,
        redis_url=settings.redis_url,
        work_dir=work_dir / "inputs",
        reclaim_seconds=settings.reclaim_seconds,
        keys=Keys(settings.redis_prefix),
        name=name,
        models=tuple(settings.models),
        grace_seconds=settings.shutdown_grace_seconds,
    )
    try:
        await worker.run(stop)
    finally:
        if lock is not None:
            lock.release()
        if stuck.job_id is not None:
            # Its job was reported failed; Redis hands the others to a worker that answers.
            raise EngineStuck(stuck.job_id)

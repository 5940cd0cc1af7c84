"""The heartbeat file the running bot writes and the container's health check reads
(`python -m bot health`). Kept apart from bot/app.py: the check runs every minute beside a busy
GPU and must answer within Docker's timeout, so it imports no torch, diffusers or discord."""

from __future__ import annotations

import json
import time
from pathlib import Path

HEARTBEAT_SECONDS = 30.0

# What each queue state means to the host; only "ready" (and the Redis bot's "no_workers":
# it is up and keeps clips until a worker comes) is healthy.
_UNHEALTHY = {
    "starting": "still starting",
    "loading": "still loading the model",
    "load_failed": "the model failed to load",
    "stuck": "the GPU stopped responding or failed during a clip; the bot is restarting",
    "failed": "the GPU worker stopped after an internal error; restart the bot",
    "stopping": "shutting down",
    "stopped": "stopped",
}


def write_heartbeat(path: Path, *, discord_ready: bool, queue: str) -> None:
    """Blocking; replaces the file in one step, so the check never reads half of it."""
    tmp = path.with_suffix(".tmp")
    state = {"time": time.time(), "discord_ready": discord_ready, "queue": queue}
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def healthy(path: Path, max_age: float = 3 * HEARTBEAT_SECONDS) -> tuple[bool, str]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return False, f"no heartbeat at {path}"
    age = time.time() - float(state.get("time", 0))
    if age > max_age:
        return False, f"heartbeat is {age:.0f} s old"
    if not state.get("discord_ready"):
        return False, "not connected to Discord"
    queue = str(state.get("queue"))
    if queue in _UNHEALTHY:
        return False, _UNHEALTHY[queue]
    if queue == "no_workers":
        return True, "ok (no GPU worker connected; clips wait for one)"
    if queue != "ready":
        return False, f"unknown queue state {queue!r}"
    return True, "ok (ready)"

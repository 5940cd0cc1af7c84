"""The container's health check (`python -m bot health`) reads the bot's heartbeat file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bot.app import healthy


def beat(path: Path, *, age: float = 0.0, ready: bool = True, queue: str = "ready") -> Path:
    path.write_text(json.dumps({"time": time.time() - age, "discord_ready": ready, "queue": queue}))
    return path


def test_a_connected_bot_with_its_model_loaded_is_healthy(tmp_path: Path) -> None:
    assert healthy(beat(tmp_path / "health.json")) == (True, "ok (ready)")


def test_each_unhealthy_state_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert healthy(path) == (False, f"no heartbeat at {path}")
    ok, why = healthy(beat(path, age=3600))
    assert not ok and "old" in why
    assert healthy(beat(path, ready=False)) == (False, "not connected to Discord")
    assert healthy(beat(path, queue="load_failed")) == (False, "the model failed to load")
    ok, why = healthy(beat(path, queue="stuck"))
    assert not ok and "GPU stopped responding" in why

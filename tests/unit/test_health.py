"""The container's health check (`python -m bot health`) reads the bot's heartbeat file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bot.health import healthy


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
    # A worker that died, a bot shutting down, or one still loading is not serving clips.
    for state, why in [
        ("failed", "internal error"),
        ("stopping", "shutting down"),
        ("stopped", "stopped"),
        ("loading", "still loading the model"),
        ("starting", "still starting"),
        ("something new", "unknown queue state"),
    ]:
        ok, text = healthy(beat(path, queue=state))
        assert not ok and why in text, (state, text)


def test_a_redis_bot_without_workers_is_up_and_says_so(tmp_path: Path) -> None:
    ok, why = healthy(beat(tmp_path / "health.json", queue="no_workers"))
    assert ok and "no GPU worker" in why


def test_the_check_answers_quickly_without_loading_torch_or_discord(tmp_path: Path) -> None:
    # Docker gives it 10 s beside a busy GPU; importing torch and diffusers alone can take that.
    beat(tmp_path / "health.json")
    probe = (
        "import sys; from bot.__main__ import main; code = main(['health']); "
        "heavy = {'torch', 'discord', 'diffusers'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "DATA_DIR": str(tmp_path), "DISCORD_TOKEN": ""},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok (ready)", "[]"]


class Socket:
    def __init__(self, open_: bool) -> None:
        self.open = open_


class Bot:
    def __init__(self, ready: bool, ws: Socket | None) -> None:
        self._ready, self.ws = ready, ws

    def is_ready(self) -> bool:
        return self._ready


def test_a_bot_trying_to_reconnect_is_not_connected() -> None:
    from bot.app import connected

    assert connected(Bot(True, Socket(True)))  # type: ignore[arg-type]
    # discord.py's is_ready stays true through its reconnect loop, however long the outage.
    assert not connected(Bot(True, Socket(False)))  # type: ignore[arg-type]
    assert not connected(Bot(False, None))  # type: ignore[arg-type]

"""`python -m bot` as the host runs it: a separate process, configured by the environment."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

from tests.fakes.discord_client import discord_py_pointed_at, running_bot_process
from tests.fakes.discord_server import FakeDiscordServer

ROOT = Path(__file__).resolve().parents[2]


def host_env(server: FakeDiscordServer, model: Path, data: Path) -> dict[str, str]:
    return {
        **server.env(),
        "SVD_MODEL": str(model),
        "RESOLUTION": "256",
        "DEVICE": "cpu",
        "DATA_DIR": str(data),
        "DATABASE_PATH": str(data / "bot.sqlite3"),
        "PYTHONPATH": str(ROOT),
        # The CI machine's disk may be nearly full; the disk floor has a test of its own.
        "MIN_FREE_DISK_MB": "0",
    }


async def _sync_process(
    server: FakeDiscordServer, model: Path, data: Path, guild_id: int
) -> tuple[int | None, str]:
    """`python -m bot sync --guild ID` as the host types it: its exit code and its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "sync",
        "--guild",
        str(guild_id),
        env={**os.environ, **host_env(server, model, data)},
        cwd=data,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, output.decode()


async def test_sync_registers_the_commands_in_one_server(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    guild = discord_server.guild
    returncode, output = await _sync_process(discord_server, tiny_model_dir, tmp_path, guild.id)
    assert returncode == 0, output
    names = {command["name"] for command in discord_server.commands(guild)}
    assert names == {
        "animate",
        "queue",
        "cancel",
        "quota",
        "quota-admin",
        "defaults",
        "history",
        "help",
        "Animate",
    }
    assert "Registered 9 commands" in output
    assert discord_server.commands() == []  # nothing global: sync happens only where asked


async def test_sync_to_a_server_the_bot_is_not_in_says_what_to_check(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    mistyped = 123456789012345678
    returncode, output = await _sync_process(discord_server, tiny_model_dir, tmp_path, mistyped)
    assert returncode == 2, output
    assert "Check the id" in output and "applications.commands" in output
    assert "Traceback" not in output


async def test_the_bot_runs_and_stops_cleanly_on_sigterm(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = host_env(discord_server, tiny_model_dir, tmp_path)
    env["METRICS_PORT"] = str(free_port())
    async with running_bot_process(discord_server, env=env, timeout=120) as process:
        # METRICS_PORT alone turns Prometheus metrics on.
        metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{env['METRICS_PORT']}/metrics")
        assert "svdbot_queue_waiting_jobs 0.0" in metrics
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0
    assert (tmp_path / "bot.sqlite3").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# `python -m bot` with the real engine, except that a clip with seed 99 never comes back from the
# GPU (a wedged driver call: it ignores cancel too). Its thread is not a daemon, like the engine's.
WEDGED_BOT = """
import sys
import threading

import bot.app
from bot.__main__ import main

real_build_engine = bot.app.build_engine


class Wedged:
    def __init__(self, engine):
        self._engine = engine

    def load(self):
        self._engine.load()

    def frames_for(self, model):
        return self._engine.frames_for(model)

    def run(self, image, options, on_step, should_cancel):
        if options.seed == 99:
            threading.Event().wait()
        return self._engine.run(image, options, on_step, should_cancel)


bot.app.build_engine = lambda settings, **kw: Wedged(real_build_engine(settings, **kw))
sys.exit(main())
"""


async def _sync(server: FakeDiscordServer, model: Path, data: Path) -> None:
    """The commands registered in the test server, as `svd-bot sync --guild` does (that command
    is tested above), in this process: a process start costs seconds of imports."""
    from bot.app import sync_commands
    from tests.e2e.test_bot import settings_for

    settings = settings_for(server, model, data)
    with discord_py_pointed_at(server):  # put back afterwards: sync points discord.py here
        assert await sync_commands(settings, server.bot_token, server.guild.id)


async def test_a_wedged_gpu_restarts_the_bot_and_no_clip_is_lost(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.e2e.test_bot import animate, clip_message, reply_text

    env = {
        **host_env(discord_server, tiny_model_dir, tmp_path),
        "JOB_TIMEOUT_SECONDS": "2",
        "STUCK_RESTART_SECONDS": "1",
    }
    await _sync(discord_server, tiny_model_dir, tmp_path)
    other = discord_server.add_user("other")
    wedged = [sys.executable, "-c", WEDGED_BOT]
    async with running_bot_process(discord_server, wedged, env=env, timeout=120) as process:
        hung = await animate(discord_server, seed=99)
        assert "Got it" in await reply_text(hung, within=60)
        behind = await animate(discord_server, user=other, seed=5)
        assert "Got it" in await reply_text(behind, within=30)
        told = await hung.wait_followup(lambda m: "limit" in m.content, timeout=60)
        assert "not charged" in told.content
        # The engine thread never returns: the process ends itself rather than hang for ever.
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 75  # EX_TEMPFAIL: Docker's restart policy starts it again
    # Started again (as the supervisor would): the clip that was waiting is made and posted.
    # (With a time limit a busy CPU can keep: the wedge is gone.)
    env["JOB_TIMEOUT_SECONDS"] = "300"
    async with running_bot_process(discord_server, env=env, timeout=120):
        posted = await clip_message(discord_server, other.id)
    assert posted.attachments


async def test_sigterm_ends_the_bot_even_with_an_engine_thread_that_never_returns(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **host_env(discord_server, tiny_model_dir, tmp_path),
        "JOB_TIMEOUT_SECONDS": "2",
        "STUCK_RESTART_SECONDS": "",  # never restart by itself: only the SIGTERM ends it
        "SHUTDOWN_GRACE_SECONDS": "0",
    }
    await _sync(discord_server, tiny_model_dir, tmp_path)
    from tests.e2e.test_bot import animate, reply_text

    wedged = [sys.executable, "-c", WEDGED_BOT]
    async with running_bot_process(discord_server, wedged, env=env, timeout=120) as process:
        hung = await animate(discord_server, seed=99)
        assert "Got it" in await reply_text(hung, within=60)
        await hung.wait_followup(lambda m: "limit" in m.content, timeout=60)
        process.send_signal(signal.SIGTERM)
        # A plain exit would wait for the wedged thread for ever (Docker would SIGKILL it).
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0

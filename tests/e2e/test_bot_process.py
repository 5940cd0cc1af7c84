"""`python -m bot` as the host runs it: a separate process, configured by the environment."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.fakes.discord_client import running_bot_process
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
    }


async def test_sync_registers_the_commands_in_one_server(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    guild = discord_server.guild
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "sync",
        "--guild",
        str(guild.id),
        env={**os.environ, **host_env(discord_server, tiny_model_dir, tmp_path)},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    names = {command["name"] for command in discord_server.commands(guild)}
    assert names == {"animate", "queue", "cancel", "quota", "quota-admin"}
    assert "Registered 5 commands" in output.decode()
    assert discord_server.commands() == []  # nothing global: sync happens only where asked


async def test_the_bot_runs_and_stops_cleanly_on_sigterm(
    discord_server: FakeDiscordServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = host_env(discord_server, tiny_model_dir, tmp_path)
    async with running_bot_process(discord_server, env=env, timeout=120) as process:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0
    assert (tmp_path / "bot.sqlite3").exists()

"""Running the real discord.py client against the fake server, in-process.

discord.py reads two class attributes for where Discord is; the bot sets them from its
DISCORD_API_URL / DISCORD_GATEWAY_URL settings, and tests of the fake itself set them here.
"""

# Waits take a `timeout` so that running out of time fails the test with a dump of what the
# bot did instead, rather than a bare TimeoutError from an outer asyncio.timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TypeVar

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakes.discord_server import FakeDiscordServer

ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.contextmanager
def discord_py_pointed_at(server: FakeDiscordServer) -> Iterator[None]:
    """Point discord.py's REST base and gateway at `server`, and restore them afterwards."""
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = server.api_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


async def _stop(
    client: discord.Client, connection: asyncio.Task[None], timeout: float
) -> BaseException | None:
    """Close the client and collect why its connection loop ended, if not cleanly."""
    await client.close()
    done, _ = await asyncio.wait({connection}, timeout=timeout)
    if not done:
        connection.cancel()
        return TimeoutError(f"discord.py did not stop within {timeout}s")
    return None if connection.cancelled() else connection.exception()


@contextlib.asynccontextmanager
async def running_client(
    client: ClientT, server: FakeDiscordServer, *, timeout: float = 10.0
) -> AsyncIterator[ClientT]:
    """Log `client` in, connect it, wait for on_ready; close it cleanly on exit.

    Give the client a small `guild_ready_timeout` (e.g. 0.1): on_ready waits that long for
    more guilds after the last GUILD_CREATE.
    """
    await client.login(server.bot_token)
    connection = asyncio.create_task(client.connect(), name="discord.py connect")
    ready = asyncio.create_task(client.wait_until_ready(), name="discord.py ready")
    try:
        done, _ = await asyncio.wait(
            {connection, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            if connection in done:
                connection.result()  # re-raise why the client stopped
            raise TimeoutError(f"discord.py was not ready after {timeout}s")
        yield client
    except BaseException:
        ready.cancel()
        await _stop(client, connection, timeout)
        raise
    ready.cancel()
    error = await _stop(client, connection, timeout)
    if error is not None:
        raise error


@contextlib.asynccontextmanager
async def running_bot_process(
    server: FakeDiscordServer,
    argv: Sequence[str] = (sys.executable, "-m", "bot"),
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run the bot as a separate process (default `python -m bot`) against `server`, through
    DISCORD_TOKEN / DISCORD_API_URL / DISCORD_GATEWAY_URL; yield once it has identified on the
    gateway; terminate it on exit. If it exits first, the error carries its output."""
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env={**os.environ, **server.env(), **(env or {})},
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            connected = asyncio.create_task(server.wait_until_connected(timeout))
            exited = asyncio.create_task(process.wait())
            await asyncio.wait({connected, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not connected.done():
                connected.cancel()
                output.seek(0)
                tail = output.read()[-4000:].decode(errors="replace")
                raise RuntimeError(f"the bot exited with {process.returncode}:\n{tail}")
            exited.cancel()
            connected.result()
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=10)
                except TimeoutError:
                    process.kill()
                    await process.wait()

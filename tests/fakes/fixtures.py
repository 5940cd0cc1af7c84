"""Pytest fixtures for the fake Discord; import them into a conftest.py.

from tests.fakes.fixtures import discord_server, fake_discord  # noqa: F401  (in conftest.py)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.fakes.discord_client import discord_py_pointed_at
from tests.fakes.discord_server import FakeDiscordServer


@pytest.fixture
async def discord_server() -> AsyncIterator[FakeDiscordServer]:
    """A started fake Discord, closed after the test. The bot points at it through
    `server.api_url` / `server.gateway_url` (or `server.env()` for a subprocess)."""
    async with FakeDiscordServer() as server:
        yield server


@pytest.fixture
def fake_discord(discord_server: FakeDiscordServer) -> Iterator[FakeDiscordServer]:
    """The fake Discord, with discord.py's `Route.BASE` and `DEFAULT_GATEWAY` pointed at it for
    the test (restored afterwards), for clients that do not take the URLs as settings."""
    with discord_py_pointed_at(discord_server):
        yield discord_server

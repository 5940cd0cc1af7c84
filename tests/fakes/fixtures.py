"""Pytest fixtures for the fake Discord; import them into a conftest.py.

from tests.fakes.fixtures import discord_server, fake_discord  # noqa: F401  (in conftest.py)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import discord.http
import discord.webhook.async_
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


class _QuickSleeps:
    """`asyncio` as discord.py's HTTP and webhook clients see it, with every sleep `factor` as
    long. Their retries of a 5xx wait 1, 3, 5, 7 and 9 s: 25 s of a test's time for each fault
    that outlasts them, while what the test checks is the tries and what the bot does after."""

    def __init__(self, factor: float) -> None:
        self._factor = factor

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(delay * self._factor, result)


@pytest.fixture
def quick_discord_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py's own REST retries (and rate-limit waits) a tenth as long, for this test."""
    quick = _QuickSleeps(0.1)
    monkeypatch.setattr(discord.http, "asyncio", quick)
    monkeypatch.setattr(discord.webhook.async_, "asyncio", quick)

"""Fixtures for end-to-end tests: the fake Discord server (see tests/fakes/discord_server.py)."""

from tests.fakes.fixtures import discord_server, fake_discord, quick_discord_retries

__all__ = ["discord_server", "fake_discord", "quick_discord_retries"]

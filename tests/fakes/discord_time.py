"""The fake Discord's sense of time: a clock tests can move forward, and snowflakes made from it.

Discord derives an interaction's 3-second and 15-minute deadlines from the time in its id, so
the fake makes every id from its own clock: moving the clock forward by 15 minutes expires a
token exactly as waiting would, without the wait.
"""

from __future__ import annotations

import datetime
import itertools
import time

import discord.utils


class FakeClock:
    """Wall-clock time plus an offset that only `advance` changes.

    It keeps ticking with real time so that the 3-second rule measures how long the bot really
    took to answer; `advance` jumps ahead for the deadlines a test cannot afford to wait for.
    """

    def __init__(self) -> None:
        self._offset = 0.0

    def time(self) -> float:
        """Seconds since the epoch, as the fake Discord sees them."""
        return time.time() + self._offset

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.time(), tz=datetime.UTC)

    def advance(self, seconds: float) -> None:
        """Move the fake's time forward (never back: Discord's ids only grow)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds


class Snowflakes:
    """Real-looking, unique, increasing snowflakes taken at the fake clock's current time."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._increment = itertools.count()
        self._last = 0

    def next(self) -> int:
        base = discord.utils.time_snowflake(self._clock.now())
        # The low 12 bits are Discord's per-process increment: two ids made in the same
        # millisecond still differ, and ids never go backwards.
        candidate = base | (next(self._increment) & 0xFFF)
        self._last = max(candidate, self._last + 1)
        return self._last


def iso(moment: datetime.datetime) -> str:
    """A timestamp as Discord writes it in payloads."""
    return moment.isoformat(timespec="microseconds")

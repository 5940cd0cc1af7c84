"""Time as storage keeps it: aware UTC datetimes in Python, whole microseconds in SQLite.

Integers, not floats or text, so that "inside the window" comparisons are exact and indexable,
and a timestamp read back is equal to the one written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch; `when` must carry a time zone."""
    if when.tzinfo is None or when.utcoffset() is None:
        # A naive datetime is ambiguous (local time? UTC?); guessing would shift quota windows.
        raise ValueError(f"storage needs time-zone aware datetimes, got naive {when!r}")
    return (when - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def micros_or_none(when: datetime | None) -> int | None:
    return None if when is None else to_micros(when)


def datetime_or_none(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)

"""Errors `storage/` raises. Each carries its data and a `user_message`: for `QuotaExceeded` the
text goes to a Discord member as is (hence the `<t:UNIX:R>` timestamp markup, which Discord shows
in the reader's own time zone); for the database errors it is written for the host's operator."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from storage.quota_rules import counts_for


def discord_timestamp(when: datetime, style: str = "R") -> str:
    """Discord's timestamp markup: `R` renders as "in 3 hours" in the reader's own locale.
    Rounded up: a member told a clip is back at 13:00:00 must not be refused at that second."""
    return f"<t:{math.ceil(when.timestamp())}:{style}>"


class StorageError(Exception):
    """Base of every error in `storage/`; `user_message` is safe to show as is."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class SchemaTooNew(StorageError):
    """The database was written by a newer version of the bot; it is left untouched."""

    def __init__(self, found: int, supported: int, path: Path | str | None = None) -> None:
        where = f"The database {path}" if path is not None else "The database"
        super().__init__(
            f"{where} has schema version {found}, but this version of the bot only understands "
            f"up to version {supported}: it was written by a newer version. Upgrade the bot, or "
            "set DATABASE_PATH to another file. The database was not changed."
        )
        self.found = found
        self.supported = supported
        self.path = path


class DatabaseUnreadable(StorageError):
    """The file is not a SQLite database we can open (corrupt, or something else entirely)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(
            f"Cannot open the database {path}: {reason}. Restore it from a backup, or set "
            "DATABASE_PATH to another file."
        )
        self.path = path
        self.reason = reason


class QuotaExceeded(StorageError):
    """The member has no clip left; nothing was reserved."""

    def __init__(
        self, limit: int, used: int, period: str, next_available_at: datetime | None
    ) -> None:
        if limit == 0:
            text = "A moderator has turned off clips for you on this server."
        else:
            what = "your 1 clip" if limit == 1 else f"all {limit} of your clips"
            text = f"You have used {what} ({counts_for(period)})."
            if next_available_at is not None:
                text += f" Your next clip is available {discord_timestamp(next_available_at)}."
        super().__init__(text)
        self.limit = limit
        self.used = used
        self.period = period
        self.next_available_at = next_available_at


class JobNotFound(StorageError):
    def __init__(self, job_id: str) -> None:
        super().__init__("That clip is not known (it may have been removed).")
        self.job_id = job_id


class JobExists(StorageError):
    def __init__(self, job_id: str) -> None:
        super().__init__("That clip was already recorded.")
        self.job_id = job_id


class IllegalTransition(StorageError):
    """A job was asked to move to a state it cannot reach from where it is (e.g. a delivered clip
    back to running): a bug or a race, never something to apply silently."""

    def __init__(self, job_id: str, current: str, requested: str) -> None:
        super().__init__(f"That clip is already {current} and cannot become {requested}.")
        self.job_id = job_id
        self.current = current
        self.requested = requested

"""Errors the generation core raises.

Each carries a `user_message` that is safe to show a Discord member as is: it says what went
wrong and what to do, never a traceback or a path on the host.
"""

from __future__ import annotations

import errno
import sqlite3


class GenerationError(Exception):
    """Base of every error in `generation/`; `user_message` is shown to the member."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class InvalidOptions(GenerationError):
    """An option is out of range; `field` names it so the bot can point at it."""

    def __init__(self, field: str, user_message: str) -> None:
        super().__init__(user_message)
        self.field = field


class InvalidImage(GenerationError):
    """The upload is not a still image we can animate (wrong type, corrupt, too large...)."""


class PictureGone(GenerationError):
    """A variation (Re-roll, More / Less motion) of a clip whose picture is no longer kept."""

    def __init__(self) -> None:
        super().__init__(
            "The original picture for this clip is no longer kept. "
            "Use `/animate` with the picture again."
        )


class QueueFull(GenerationError):
    """The queue holds as many waiting jobs as the host allows."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(
            f"The queue is full ({waiting} of {limit} clips waiting). "
            "Please try again in a few minutes; nothing was charged."
        )
        self.waiting = waiting
        self.limit = limit


class TooManyJobs(GenerationError):
    """The user already has as many jobs waiting or running as allowed."""

    def __init__(self, active: int, limit: int, *, elsewhere: int = 0) -> None:
        clips = "1 clip" if active == 1 else f"{active} clips"
        text = f"You already have {clips} waiting or in progress (the limit is {limit}"
        if elsewhere:
            # The cap is per person, whichever server they asked in; /queue shows only this one's.
            text += (
                f", in all the servers this bot is in; {elsewhere} of them in another server, "
                "where `/queue` shows them"
            )
        super().__init__(text + "). Wait for one to finish or `/cancel` it; nothing was charged.")
        self.active = active
        self.limit = limit
        self.elsewhere = elsewhere


class GenerationFailed(GenerationError):
    """The engine could not make the clip for a reason that is not the user's fault."""

    def __init__(self, user_message: str, *, reason: str = "error") -> None:
        super().__init__(user_message)
        # A short machine-readable label for logs and metrics: "oom", "timeout", "error"...
        self.reason = reason


DISK_FULL_MESSAGE = (
    "The bot's server is out of disk space, so it can't make clips right now. You were not "
    "charged; please try again later (the host has to free some space)."
)
# What a full disk says where no errno reaches us: ffmpeg's error output, SQLite's message.
_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")


class DiskFull(GenerationFailed):
    """The host's disk (DATA_DIR, the database) is full: nothing the member can fix, and trying
    again at once would fail the same way. `detail` is for the log: where, and how full."""

    def __init__(self, detail: str) -> None:
        super().__init__(DISK_FULL_MESSAGE, reason="disk")
        self.detail = detail

    def __str__(self) -> str:
        return f"disk full: {self.detail}"


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk is full: an `OSError`
    (ENOSPC, EDQUOT), SQLite's SQLITE_FULL, or ffmpeg's "No space left on device"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == (
            sqlite3.SQLITE_FULL
        ):
            return True
        if any(text in str(exc).lower() for text in _FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class GPUUnusable(GenerationError):
    """The GPU failed in a way that poisons the process's CUDA context (an illegal memory access,
    a device-side assert, an ECC error): every later clip would fail too, and only a new process
    can use the GPU again. The clip is not at fault and is kept for after the restart."""

    def __init__(self, detail: str) -> None:
        super().__init__("The bot is restarting; your clip will be made when it is back.")
        self.detail = detail


class Cancelled(GenerationError):
    """The job was cancelled by its owner (or a moderator) before it finished."""

    def __init__(self) -> None:
        super().__init__("The clip was cancelled.")

"""What a server's members made over a span of days, for its moderators (`/quota-admin usage`):
enough to choose limits by, read by `JobStore.usage` from the job records the bot keeps anyway
(KEEP_HISTORY_DAYS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class GuildUsage:
    """Clips asked for since `since`, by how they ended."""

    since: datetime
    posted: int = 0
    failed: int = 0  # refunded
    cancelled: int = 0
    pending: int = 0  # waiting, being made, or made and not posted yet
    members: int = 0  # who had a clip posted
    # (user id, clips posted), most first.
    top: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    # Medians over the posted clips: from the request to the start of making it, and making it.
    wait_seconds: float | None = None
    make_seconds: float | None = None

    @property
    def asked(self) -> int:
        return self.posted + self.failed + self.cancelled + self.pending

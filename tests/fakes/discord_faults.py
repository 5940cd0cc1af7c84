"""Failures a test asks for: the next matching request gets them instead of its real answer.

The shapes are the ones discord.py reacts to: a 429 needs a JSON body with `retry_after` and a
`Via` header (without them discord.py assumes a Cloudflare ban and raises instead of waiting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# A fault's status meaning "close the connection, answer nothing".
DISCONNECT = 0


@dataclass
class Fault:
    """One injected answer; `times=None` keeps firing for the rest of the test."""

    method: str | None  # None matches every method
    path: re.Pattern[str]  # searched in the path relative to the API base
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = 1
    # Do what was asked first, then answer with the fault: Discord stored the message, but
    # its edge failed before the answer got out (so a blind retry posts it twice).
    after_applying: bool = False
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        return (self.method is None or self.method == method) and bool(self.path.search(path))


class Faults:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(
        self,
        method: str | None,
        path: str,
        status: int,
        body: Any = None,
        *,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        after_applying: bool = False,
    ) -> Fault:
        """Answer the next `times` requests whose path matches the regex `path` with `status`.

        `path` is searched in the API-relative path, e.g. r"/webhooks/\\d+/[^/]+$" for followups.
        """
        fault = Fault(
            method=method.upper() if method else None,
            path=re.compile(path),
            status=status,
            body=body,
            headers=dict(headers or {}),
            times=times,
            after_applying=after_applying,
        )
        self._faults.append(fault)
        return fault

    def rate_limit(
        self,
        method: str | None,
        path: str,
        *,
        retry_after: float = 0.1,
        is_global: bool = False,
        times: int | None = 1,
    ) -> Fault:
        """A 429 as Discord sends it, which discord.py waits out and retries."""
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
        }
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fake-bucket",
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        return self.add(method, path, 429, body, times=times, headers=headers)

    def server_error(
        self,
        method: str | None,
        path: str,
        *,
        status: int = 500,
        times: int | None = 1,
        after_applying: bool = False,
    ) -> Fault:
        """A 5xx, as Discord's edge answers when something behind it fails (`after_applying`:
        after the request took effect)."""
        body = {"message": f"{status}: Internal Server Error", "code": 0}
        return self.add(method, path, status, body, times=times, after_applying=after_applying)

    def disconnect(self, method: str | None, path: str, *, times: int | None = 1) -> Fault:
        """No answer at all: the connection is closed under the request (a network blip), which
        the client sees as an aiohttp error, not an HTTP status."""
        return self.add(method, path, DISCONNECT, None, times=times)

    def take(self, method: str, path: str) -> Fault | None:
        """The first armed fault for this request, counted as fired."""
        for fault in self._faults:
            if fault.matches(method, path):
                fault.fired += 1
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        """Faults that have not fired as often as asked: a test may assert this is empty."""
        return [f for f in self._faults if f.times is not None and f.fired < f.times]

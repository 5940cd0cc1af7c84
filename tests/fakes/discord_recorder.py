"""Everything the bot sent to the fake Discord, and ways to wait for what it will send.

`wait_for` hands out each recorded request at most once, so "the next followup with a file"
called twice returns two different followups.
"""

# Waits take a `timeout` so that running out of time fails the test with a dump of what the
# bot did instead, rather than a bare TimeoutError from an outer asyncio.timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.fakes.discord_models import UploadedFile

T = TypeVar("T")

Predicate = Callable[["RecordedRequest"], bool]


@dataclass(frozen=True)
class RecordedRequest:
    index: int
    method: str
    path: str  # relative to the API base, e.g. "/webhooks/1/abc/messages/@original"
    kind: str  # which route answered: "followup", "edit_original", "channel_send", ...
    query: dict[str, str]
    json: Any  # the JSON body, or the parsed payload_json part of a multipart body
    files: tuple[UploadedFile, ...]
    status: int
    response: Any = field(repr=False)
    fault: bool = False  # answered by an injected fault, not by the route
    interaction_id: int | None = None
    token: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class GatewayFrame:
    """A frame the bot sent on the gateway (op 1 heartbeat, 2 identify, 6 resume, ...)."""

    index: int
    op: int
    data: Any
    path: str  # which URL the connection was opened on: the gateway or the resume URL


class Recorder:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.frames: list[GatewayFrame] = []
        self._claimed_requests: set[int] = set()
        self._claimed_frames: set[int] = set()
        self._changed = asyncio.Condition()

    def next_index(self) -> int:
        return len(self.requests)

    async def add_request(self, request: RecordedRequest) -> None:
        self.requests.append(request)
        await self.changed()

    async def add_frame(self, op: int, data: Any, path: str) -> None:
        self.frames.append(GatewayFrame(len(self.frames), op, data, path))
        await self.changed()

    async def changed(self) -> None:
        """Wake every waiter: the fake's state may now satisfy what they wait for."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait until `check()` returns something other than None or False, re-checking after
        every request and gateway frame."""
        result: list[T] = []

        def done() -> bool:
            value = check()
            if value is None or value is False:
                return False
            result.append(value)
            return True

        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(done)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self}") from None
        return result[0]

    async def wait_for(
        self, predicate: Predicate, timeout: float = 5.0, what: str = "a request"
    ) -> RecordedRequest:
        """The first recorded request matching `predicate` not handed out before."""

        def find() -> RecordedRequest | None:
            for request in self.requests:
                if request.index not in self._claimed_requests and predicate(request):
                    self._claimed_requests.add(request.index)
                    return request
            return None

        return await self.wait_until(find, timeout, what)

    async def wait_for_frame(
        self, predicate: Callable[[GatewayFrame], bool], timeout: float = 5.0, what: str = "a frame"
    ) -> GatewayFrame:
        def find() -> GatewayFrame | None:
            for frame in self.frames:
                if frame.index not in self._claimed_frames and predicate(frame):
                    self._claimed_frames.add(frame.index)
                    return frame
            return None

        return await self.wait_until(find, timeout, what)

    def matching(self, predicate: Predicate) -> list[RecordedRequest]:
        return [r for r in self.requests if predicate(r)]

    def __str__(self) -> str:
        lines = [f"{len(self.requests)} requests recorded (last 15):"]
        for r in self.requests[-15:]:
            files = f" files={[f.filename for f in r.files]}" if r.files else ""
            fault = " (fault)" if r.fault else ""
            lines.append(f"  {r.method} {r.path} [{r.kind}] -> {r.status}{fault}{files}")
        lines.append(f"gateway ops from the bot: {[f.op for f in self.frames][-30:]}")
        return "\n".join(lines)

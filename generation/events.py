"""Fan-out of job events to subscribers that read at their own pace.

Publishing never waits for a reader: each subscription keeps its own pending list, and progress
that a newer event makes obsolete (a step, a position) replaces the pending one of the same job
instead of piling up ("latest progress wins"). State events (started, encoding, done...) are never
dropped, so a reader that falls behind still sees every change, just fewer steps. Use from the
event loop only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from types import TracebackType

from generation.jobs import JobEvent


class Subscription:
    """An async iterator of events: one job's (ends after its terminal event) or all jobs'."""

    def __init__(self, bus: EventBus, job_id: str | None) -> None:
        self._bus = bus
        self.job_id = job_id
        self._pending: deque[JobEvent] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def push(self, event: JobEvent) -> None:
        if self._closed:
            return
        if event.kind.coalescable:
            # Replace the job's pending progress of the same kind if nothing newer about that job
            # is pending after it: the reader only ever needs the latest.
            for index in range(len(self._pending) - 1, -1, -1):
                pending = self._pending[index]
                if pending.job_id == event.job_id:
                    if pending.kind is event.kind:
                        self._pending[index] = event
                        return
                    break
        self._pending.append(event)
        self._wake.set()
        if self.job_id is not None and event.terminal:
            # Nothing follows a terminal event: unregister now, the reader still gets it.
            self.close()

    def close(self) -> None:
        """No more events; iteration ends once the pending ones are read."""
        self._closed = True
        self._bus._discard(self)
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return len(self._pending)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> JobEvent:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventBus:
    """Delivers each published event to the job's subscribers and to the all-jobs streams."""

    def __init__(self, *, keep_finished: int = 1000) -> None:
        self._by_job: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        # The latest event of each live job, and of the last `keep_finished` finished ones, so a
        # late subscriber starts from the current state.
        self._latest: dict[str, JobEvent] = {}
        self._finished: OrderedDict[str, JobEvent] = OrderedDict()
        self._keep_finished = keep_finished
        self._closed = False

    def subscribe(self, job_id: str) -> Subscription:
        """The job's latest event (if any), then each new one until its terminal event. A job not
        submitted yet is waited for."""
        subscription = Subscription(self, job_id)
        latest = self.latest(job_id)
        if latest is not None:
            subscription.push(latest)
        if self._closed:
            subscription.close()
        elif not subscription.closed:
            self._by_job.setdefault(job_id, set()).add(subscription)
        return subscription

    def events(self) -> Subscription:
        """Every event published from now on, until the bus closes."""
        subscription = Subscription(self, None)
        if self._closed:
            subscription.close()
        else:
            self._all.add(subscription)
        return subscription

    def publish(self, event: JobEvent) -> None:
        if event.terminal:
            self._latest.pop(event.job_id, None)
            self._finished[event.job_id] = event
            self._finished.move_to_end(event.job_id)
            while len(self._finished) > self._keep_finished:
                self._finished.popitem(last=False)
        else:
            self._latest[event.job_id] = event
        for subscription in list(self._by_job.get(event.job_id, ())):
            subscription.push(event)
        for subscription in list(self._all):
            subscription.push(event)

    def forget(self, job_id: str) -> None:
        """Drop a finished job's outcome: it is about to run again, and a subscriber must not
        take the old outcome for the new run's."""
        self._finished.pop(job_id, None)

    def latest(self, job_id: str) -> JobEvent | None:
        return self._latest.get(job_id) or self._finished.get(job_id)

    def close(self) -> None:
        """End every subscription (after what is pending)."""
        self._closed = True
        for subscription in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            subscription.close()

    def _discard(self, subscription: Subscription) -> None:
        if subscription.job_id is None:
            self._all.discard(subscription)
            return
        subscribers = self._by_job.get(subscription.job_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._by_job[subscription.job_id]

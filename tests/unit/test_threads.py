"""The bot's event loop ends when its work does, whatever a thread off it is stuck on."""

from __future__ import annotations

import asyncio
import threading
import time

from bot import threads


def test_a_thread_stuck_off_the_loop_does_not_hold_up_the_end() -> None:
    # A statvfs on a hung disk, or a look-up waiting behind a model that loads for minutes:
    # asyncio.run would wait for it (for ever on 3.11) before a restart could happen.
    hung = threading.Event()

    async def main() -> str:
        stuck = asyncio.ensure_future(asyncio.to_thread(hung.wait))
        await asyncio.sleep(0.1)  # it is running now
        assert not stuck.done()
        return "done"

    started = time.monotonic()
    try:
        assert threads.run(main()) == "done"
        assert time.monotonic() - started < 2.0
        # The exit can tell that it is still busy (and ends the process without joining it).
        assert [t.name for t in threads.busy_threads(threads.IO_THREAD_PREFIX, wait=0.2)]
    finally:
        hung.set()
    assert threads.busy_threads(threads.IO_THREAD_PREFIX, wait=2.0) == []


def test_work_not_begun_when_the_loop_ends_is_dropped() -> None:
    hung = threading.Event()
    ran: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        workers = getattr(loop._default_executor, "_max_workers", 1)
        busy = [asyncio.ensure_future(asyncio.to_thread(hung.wait)) for _ in range(workers)]
        behind = asyncio.ensure_future(asyncio.to_thread(ran.append, 1))
        await asyncio.sleep(0.1)
        assert not any(f.done() for f in [*busy, behind])

    try:
        threads.run(main())
    finally:
        hung.set()
    threads.busy_threads(threads.IO_THREAD_PREFIX, wait=2.0)
    assert ran == []

"""The process's event loop, run so that a thread stuck off it cannot hold up the exit.

`asyncio.run` joins the loop's default executor (`asyncio.to_thread`) before it returns: for ever
on Python 3.11, for 5 minutes on 3.12. Some of those threads may be stuck for as long: a
statvfs on a hung network disk (the disk probe is left behind on purpose), a frame-count look-up
waiting on the engine's lock while a model loads for minutes, or behind a wedged GPU. Then a
Ctrl-C, a `docker stop` or the restart after a stuck GPU (exit code 75) would wait for them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# The default executor's threads, named so the exit can tell whether one is still busy.
IO_THREAD_PREFIX = "svd-io"


class _DetachedExecutor(ThreadPoolExecutor):
    """Shut down without waiting for its threads: work not begun is dropped, work under way is
    left to finish (or to the process's end, see `busy_threads`)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, returning as soon as `main` has, whatever its threads still do."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(
            _DetachedExecutor(thread_name_prefix=IO_THREAD_PREFIX)
        )
        return runner.run(main)


def busy_threads(*prefixes: str, wait: float = 1.0) -> list[threading.Thread]:
    """Threads named with one of `prefixes` still running after `wait` seconds in all. An
    idle pool thread leaves within moments of its pool's shutdown; a busy one would hold up the
    interpreter's exit, which joins them."""
    found = [t for t in threading.enumerate() if t.name.startswith(prefixes)]
    for thread in found:
        thread.join(timeout=wait / max(len(found), 1))
    return [t for t in found if t.is_alive()]

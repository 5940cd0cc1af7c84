"""Quota reservations per second on one SQLite database file.

    python -m bench.storage                      # 1000 members x 5 clips = 5000 reservations
    python -m bench.storage --members 4000 --dir /var/lib/bot --json bench/out/storage.json

Every scenario runs on a fresh database file (WAL, synchronous=NORMAL: what the bot uses), with
the host default of 5 clips a day and a few role limits, so each reservation does the real work:
resolve the member's limit, count their clips in the window, hold one.

  sequential      one caller; each member reserves until their 5 clips are used
  concurrent      the same, from 50 callers at once (asyncio tasks sharing the one Database)
  refused         members who used their 5: every reserve raises QuotaExceeded
  reserve+charge  a delivered clip's bookkeeping: reserve, then charge
The goal (issue 4) is that storage never shows in the bot's latency: well over 1,000 a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from storage.database import Database
from storage.errors import QuotaExceeded
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

GUILD = 1
LIMIT = 5
# Members carry three roles; one of them has a limit, equal to the default.
ROLES = (10, 11, 12)
Work = list[Callable[[], Awaitable[object]]]


@dataclass(frozen=True)
class Result:
    scenario: str
    operations: int
    seconds: float
    per_second: float
    # Operations per second of CPU time used by this process (all its threads): what the work
    # costs, whatever else the machine is busy with.
    per_cpu_second: float
    # Per operation; under concurrency this includes waiting for the other callers.
    p50_ms: float
    p99_ms: float


async def open_store(path: Path) -> tuple[Database, QuotaStore]:
    db = await Database.open(path)
    settings = GuildSettingsStore(db, default_limit=LIMIT, default_period="day")
    quotas = QuotaStore(db, settings=settings)
    await quotas.set_role_limit(GUILD, ROLES[0], LIMIT, actor_id=0)
    return db, quotas


async def measure(name: str, work: Work, concurrency: int) -> Result:
    """Run every item of `work` with `concurrency` callers; time each and the whole."""
    samples: list[float] = []
    queue = iter(work)

    async def caller() -> None:
        for item in queue:
            started = time.perf_counter()
            await item()
            samples.append(time.perf_counter() - started)

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    samples.sort()
    return Result(
        scenario=name,
        operations=len(samples),
        seconds=seconds,
        per_second=len(samples) / seconds,
        per_cpu_second=len(samples) / cpu_seconds,
        p50_ms=statistics.median(samples) * 1000,
        p99_ms=samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
    )


def every_clip(members: int, step: Callable[[int, int], Awaitable[object]]) -> Work:
    """`step(user_id, n)` for each member's 5 clips, members taking turns (so each window holds
    0 to 4 clips when a reservation looks at it)."""
    return [partial(step, user_id, n) for n in range(LIMIT) for user_id in range(members)]


def reservations(quotas: QuotaStore, members: int, tag: str) -> Work:
    async def reserve(user_id: int, n: int) -> object:
        return await quotas.reserve(GUILD, user_id, ROLES, f"{tag}-{user_id}-{n}")

    return every_clip(members, reserve)


async def sequential(path: Path, members: int, concurrency: int) -> Result:
    db, quotas = await open_store(path)
    try:
        return await measure("sequential", reservations(quotas, members, "seq"), 1)
    finally:
        await db.close()


async def concurrent(path: Path, members: int, concurrency: int) -> Result:
    db, quotas = await open_store(path)
    try:
        work = reservations(quotas, members, "con")
        return await measure(f"concurrent ({concurrency} callers)", work, concurrency)
    finally:
        await db.close()


async def refused(path: Path, members: int, concurrency: int) -> Result:
    db, quotas = await open_store(path)
    try:
        for fill in reservations(quotas, members, "fill"):
            await fill()

        async def refuse(user_id: int, n: int) -> None:
            try:
                await quotas.reserve(GUILD, user_id, ROLES, f"ref-{user_id}-{n}")
            except QuotaExceeded:
                return
            raise AssertionError("a member at their limit got a clip")

        return await measure("refused (at the limit)", every_clip(members, refuse), 1)
    finally:
        await db.close()


async def reserve_and_charge(path: Path, members: int, concurrency: int) -> Result:
    db, quotas = await open_store(path)
    try:

        async def deliver(user_id: int, n: int) -> None:
            await quotas.reserve(GUILD, user_id, ROLES, f"rc-{user_id}-{n}")
            await quotas.charge(f"rc-{user_id}-{n}")

        return await measure("reserve+charge", every_clip(members, deliver), 1)
    finally:
        await db.close()


async def run(args: argparse.Namespace) -> list[Result]:
    # A fresh folder each run, a fresh file per scenario: nothing left over skews the numbers.
    folder = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    results = []
    for scenario in (sequential, concurrent, refused, reserve_and_charge):
        path = folder / f"{scenario.__name__}.sqlite3"
        results.append(await scenario(path, args.members, args.concurrency))
    return results


def machine() -> str:
    load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {load}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Quota reservations per second on SQLite")
    parser.add_argument("--members", type=int, default=1000, help="5 reservations each")
    parser.add_argument("--concurrency", type=int, default=50, help="callers at once")
    parser.add_argument("--dir", help="where to create the database files (default: /tmp)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    before = machine()
    results = asyncio.run(run(args))
    # The load average before and after: other work on the machine shows in the numbers.
    print(f"before: {before}\nafter:  {machine()}")
    print(
        f"{'scenario':<28}{'ops':>7}{'seconds':>9}{'ops/s':>8}{'ops/CPU-s':>11}"
        f"{'p50 ms':>8}{'p99 ms':>8}"
    )
    for r in results:
        print(
            f"{r.scenario:<28}{r.operations:>7}{r.seconds:>9.2f}{r.per_second:>8.0f}"
            f"{r.per_cpu_second:>11.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
        )
    if args.json:
        report = {"machine": before, "results": [asdict(r) for r in results]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

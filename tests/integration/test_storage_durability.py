"""Durability: a bot process killed with SIGKILL while it writes leaves a database that opens,
passes SQLite's integrity check, keeps every transaction it had committed and none it had not,
and whose recovery query finds the jobs that were running."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storage.database import Database
from storage.jobs import TRANSITIONS, JobState, JobStore
from storage.migrations import LATEST_VERSION
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

ROOT = Path(__file__).resolve().parents[2]

# The child plays the bot: for each clip it reserves, records the job, starts it and reports
# each step only after it is committed. Every third clip it also finishes and delivers.
CHILD = """
import asyncio, sys
from storage.database import Database
from storage.jobs import JobRecord, JobState, JobStore
from storage.quotas import QuotaStore
from storage.settings import GuildSettingsStore

async def main(path, mode):
    db = await Database.open(path)
    quotas = QuotaStore(db, settings=GuildSettingsStore(db, default_limit=None))
    jobs = JobStore(db)
    if mode == "hold":
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO jobs (job_id, guild_id, channel_id, user_id, state, created_at_us)"
                " VALUES ('uncommitted', 1, 1, 1, 'queued', 0)"
            )
            print("inside", flush=True)
            await asyncio.sleep(60)
    n = 0
    while True:
        job_id = f"job{n:06d}"
        await quotas.reserve(1, n % 7, (), job_id)
        await jobs.create(JobRecord(job_id=job_id, guild_id=1, channel_id=2, user_id=n % 7,
                                    options={"n": n}, cost_units=n + 1))
        await jobs.increment_attempts(job_id)
        await jobs.set_state(job_id, JobState.RUNNING)
        print("running", job_id, flush=True)
        if n % 3 == 0:
            await jobs.set_state(job_id, JobState.ENCODING)
            await jobs.set_state(job_id, JobState.DONE, output_path=f"/out/{job_id}.mp4")
            await quotas.charge(job_id)
            await jobs.set_state(job_id, JobState.DELIVERED)
            print("delivered", job_id, flush=True)
        n += 1

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run_and_kill(path: Path, mode: str, after_lines: int) -> list[list[str]]:
    """Start the child, SIGKILL it once it has reported `after_lines` lines; return all lines."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[list[str]] = []
    try:
        while len(lines) < after_lines:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"child ended early: {child.stderr.read()}")  # type: ignore[union-attr]
            lines.append(line.split())
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == -signal.SIGKILL
    # Lines the child wrote before it died are reports of committed work too.
    lines.extend(line.split() for line in rest.splitlines() if line.strip())
    return lines


async def check_sqlite_integrity(db: Database) -> None:
    assert [tuple(r) for r in await db.fetch("PRAGMA integrity_check")] == [("ok",)]
    assert await db.fetch("PRAGMA foreign_key_check") == []
    assert await db.schema_version() == LATEST_VERSION


@pytest.mark.parametrize("after_lines", [5, 60])
async def test_kill_during_writes_leaves_a_consistent_database(
    tmp_path: Path, after_lines: int
) -> None:
    path = tmp_path / "bot.sqlite3"
    lines = await asyncio.to_thread(run_and_kill, path, "loop", after_lines)
    reported_running = [job_id for word, job_id in lines if word == "running"]
    delivered = {job_id for word, job_id in lines if word == "delivered"}

    async with await Database.open(path) as db:
        await check_sqlite_integrity(db)
        jobs = JobStore(db)
        quotas = QuotaStore(db, settings=GuildSettingsStore(db))
        unfinished = {job.job_id: job for job in await jobs.unfinished()}
        for job_id in reported_running:
            n = int(job_id.removeprefix("job"))
            job = await jobs.get(job_id)
            assert job is not None, f"committed job {job_id} lost"
            assert job.options == {"n": n} and job.attempts == 1
            if job_id in delivered:
                assert job.state is JobState.DELIVERED
                assert await quotas.reservation_state(job_id) == "charged"
            elif n % 3:
                # Reported running and meant to stay so: the recovery query must find it.
                assert unfinished[job_id].state is JobState.RUNNING
                assert await quotas.reservation_state(job_id) == "reserved"
        # Whatever was committed after the last report is whole: every job has its reservation
        # (reserved first), and its recorded states form a legal path.
        rows = await db.fetch("SELECT job_id FROM jobs")
        assert len(rows) >= len(reported_running)
        for (job_id,) in rows:
            assert await quotas.reservation_state(job_id) in ("reserved", "charged")
            states = [state for state, _ in await jobs.events(job_id)]
            assert states[0] is JobState.QUEUED
            for before, after in itertools.pairwise(states):
                assert after in TRANSITIONS[before]
            assert states[-1] is (await jobs.get(job_id)).state  # type: ignore[union-attr]
        # And the bot can carry on writing.
        await quotas.reserve(1, 99, (), "after-restart")


async def test_a_transaction_killed_before_commit_leaves_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    assert await asyncio.to_thread(run_and_kill, path, "hold", 1) == [["inside"]]
    async with await Database.open(path) as db:
        await check_sqlite_integrity(db)
        assert await JobStore(db).get("uncommitted") is None
        assert await JobStore(db).unfinished() == []

"""The one SQLite database: opened, configured and migrated in `Database.open`, and the
transactions every store runs its SQL in.

All access goes through one aiosqlite connection (one thread) guarded by an asyncio lock: a
transaction's statements never interleave with another coroutine's, and `BEGIN IMMEDIATE` takes
SQLite's write lock up front, so a check-then-write is atomic even against another process using
the same file (it waits up to the busy timeout, then fails loudly). Each statement costs a round
trip to the connection's thread, so hot paths (a quota reservation) use `locked()` and fewer,
self-guarding statements instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from storage.errors import DatabaseUnreadable, SchemaTooNew
from storage.migrations import LATEST_VERSION, migrate, user_version

MEMORY = ":memory:"
# How long a statement waits for another process's write lock (a backup, `svd-bot sync` beside
# the bot) before failing. Long: a write that gives up loses what it recorded (a clip started,
# a clip posted), while commands still answer in time (they defer) and the GPU waits meanwhile.
BUSY_TIMEOUT_SECONDS = 30.0
_NOT_A_DATABASE = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


class Database:
    """Open with `await Database.open(path)`; close with `await db.close()` or `async with`."""

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(
        cls, path: Path | str, *, busy_timeout_seconds: float = BUSY_TIMEOUT_SECONDS
    ) -> Database:
        """Open (creating the file and its folder if needed) and bring the schema up to date.

        Raises `SchemaTooNew` for a file from a newer bot, before changing anything in it, and
        `DatabaseUnreadable` for a file that is not a SQLite database.
        """
        location = str(path)
        if location != MEMORY:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: we issue BEGIN / COMMIT ourselves, so Python's sqlite3 module never
        # opens a transaction behind our back.
        conn = await aiosqlite.connect(location, isolation_level=None)
        try:
            await _configure(conn, location, busy_timeout_seconds)
        except sqlite3.DatabaseError as exc:
            await conn.close()
            if getattr(exc, "sqlite_errorname", None) in _NOT_A_DATABASE:
                raise DatabaseUnreadable(location, str(exc)) from exc
            # Anything else (e.g. locked by another process past the busy timeout) as it is.
            raise
        except BaseException:
            await conn.close()
            raise
        return cls(conn, location)

    @property
    def conn(self) -> aiosqlite.Connection:
        """The raw connection, for tests and tools. Stores use `transaction()` / `fetch()`."""
        return self._conn

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def schema_version(self) -> int:
        async with self._lock:
            return await user_version(self._conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`): committed when the block ends, rolled back if
        it raises. Hold it only for SQL; never await anything slow inside it."""
        async with self._lock:
            # BEGIN and COMMIT inside the `try`: if the awaiting task is cancelled, the statement
            # still runs on the connection's thread, and the ROLLBACK queued after it cleans up.
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                await self._conn.execute("COMMIT")
            except BaseException:
                await _rollback(self._conn)
                raise

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection to ourselves, outside any transaction: each statement is atomic and
        commits on its own. For a consistent read followed by a guarded write (compare-and-set),
        which needs two round trips to the database thread where a transaction needs five."""
        async with self._lock:
            yield self._conn

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One write statement on its own (atomic by itself); returns the number of rows changed."""
        async with self._lock:
            cursor = await self._conn.execute(sql, tuple(params))
            return cursor.rowcount

    async def fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """One SELECT on its own (a single statement is its own consistent snapshot)."""
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, tuple(params)))


async def _configure(conn: aiosqlite.Connection, location: str, busy_timeout: float) -> None:
    # PRAGMAs take no bound parameters; the value is our own integer.
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    found = await user_version(conn)
    if found > LATEST_VERSION:
        # Before any other PRAGMA: a newer bot's file is not ours to touch.
        raise SchemaTooNew(found, LATEST_VERSION, location)
    mode = await _wal(conn, busy_timeout)
    if location != MEMORY and mode != "wal":
        raise DatabaseUnreadable(location, f"could not switch to WAL journaling (got {mode!r})")
    # In WAL mode NORMAL loses no committed transaction when the process dies (only on power
    # loss, and then the file is still consistent); FULL would fsync on every reservation.
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("PRAGMA foreign_keys = ON")
    await migrate(conn)


async def _wal(conn: aiosqlite.Connection, busy_timeout: float) -> str:
    """Switch to WAL journaling; returns the mode SQLite reports. Two processes opening a new
    file at once (the bot and a worker, or `sync`) race for the switch, which needs the file to
    itself, and SQLite answers "database is locked" at once there rather than waiting on the busy
    timeout (waiting could deadlock): so wait here, as the timeout would."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            return str(rows[0][0]).lower()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", None) != "SQLITE_BUSY":
                raise
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.02)


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        # No transaction left to roll back: SQLite already did (e.g. after SQLITE_FULL), or the
        # COMMIT went through just as the awaiting task was cancelled.
        pass

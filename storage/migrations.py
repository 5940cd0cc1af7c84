"""The schema, as numbered migrations. `PRAGMA user_version` holds the number of the last one
applied; each migration runs in its own transaction together with the bump of that number, so a
crash leaves the file at one version or the next, never in between.

Rules for adding one: append a `Migration` with the next number; never edit or reorder a released
one (files in the wild are at those versions). Times are whole microseconds since the Unix epoch
(`*_us` columns, see storage/clock.py); Discord ids are SQLite integers (they fit in 63 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    # Separate statements rather than one script: `executescript` would commit on its own and
    # the migration could not share a transaction with the version bump.
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "quotas: reservations and charges, per-user and per-role limits, moderator audit log",
        (
            """
            CREATE TABLE quota_usage (
                job_id TEXT PRIMARY KEY,
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('reserved', 'charged', 'refunded')),
                -- 1 once a moderator's reset forgave it: then it no longer counts, in any state.
                forgiven INTEGER NOT NULL DEFAULT 0 CHECK (forgiven IN (0, 1)),
                reserved_at_us INTEGER NOT NULL,
                settled_at_us INTEGER
            )
            """,
            "CREATE INDEX quota_usage_by_member ON quota_usage (guild_id, user_id, reserved_at_us)",
            """
            CREATE TABLE user_quotas (
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                -- NULL: unlimited; 0: blocked.
                clip_limit INTEGER CHECK (clip_limit IS NULL OR clip_limit >= 0),
                period TEXT NOT NULL CHECK (period IN ('hour', 'day', 'week')),
                updated_at_us INTEGER NOT NULL,
                PRIMARY KEY (guild_id, user_id)
            )
            """,
            """
            CREATE TABLE role_quotas (
                guild_id INTEGER NOT NULL,
                role_id INTEGER NOT NULL,
                -- NULL: unlimited; 0: blocked. Counted in the guild's period.
                clip_limit INTEGER CHECK (clip_limit IS NULL OR clip_limit >= 0),
                updated_at_us INTEGER NOT NULL,
                PRIMARY KEY (guild_id, role_id)
            )
            """,
            """
            CREATE TABLE audit_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                actor_id INTEGER NOT NULL,
                action TEXT NOT NULL,
                -- 'user:<id>', 'role:<id>' or 'guild'.
                target TEXT NOT NULL,
                -- JSON; NULL when there was nothing before (or is nothing after).
                old_value TEXT,
                new_value TEXT,
                created_at_us INTEGER NOT NULL
            )
            """,
            "CREATE INDEX audit_log_by_guild ON audit_log (guild_id, id)",
        ),
    ),
    Migration(
        2,
        "jobs and every state change they go through",
        (
            """
            CREATE TABLE jobs (
                job_id TEXT PRIMARY KEY,
                guild_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                application_id INTEGER,
                interaction_id INTEGER,
                -- Valid for 15 minutes after the interaction; cleared when the job ends.
                interaction_token TEXT,
                progress_message_id INTEGER,
                reply_to_message_id INTEGER,
                options TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(options)),
                model TEXT,
                seed INTEGER,
                input_path TEXT,
                output_path TEXT,
                max_bytes INTEGER,
                state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'encoding', 'done',
                                                     'delivered', 'failed', 'cancelled')),
                attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
                error TEXT,
                created_at_us INTEGER NOT NULL,
                started_at_us INTEGER,
                finished_at_us INTEGER,
                duration_seconds REAL,
                cost_units INTEGER
            )
            """,
            "CREATE INDEX jobs_by_state ON jobs (state, created_at_us)",
            "CREATE INDEX jobs_by_member ON jobs (guild_id, user_id, created_at_us)",
            """
            CREATE TABLE job_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
                state TEXT NOT NULL,
                at_us INTEGER NOT NULL
            )
            """,
            "CREATE INDEX job_events_by_job ON job_events (job_id, id)",
        ),
    ),
    Migration(
        3,
        "per-guild settings and default quota",
        (
            """
            CREATE TABLE guild_settings (
                guild_id INTEGER PRIMARY KEY,
                -- NULL: the host's default (from the environment) applies.
                max_steps INTEGER CHECK (max_steps IS NULL OR max_steps BETWEEN 1 AND 50),
                default_format TEXT
                    CHECK (default_format IS NULL OR default_format IN ('mp4', 'gif')),
                moderator_role_id INTEGER,
                updated_at_us INTEGER NOT NULL
            )
            """,
            # Its own table because "unlimited" (NULL) must differ from "not set" (no row).
            """
            CREATE TABLE guild_quotas (
                guild_id INTEGER PRIMARY KEY,
                clip_limit INTEGER CHECK (clip_limit IS NULL OR clip_limit >= 0),
                period TEXT NOT NULL CHECK (period IN ('hour', 'day', 'week')),
                updated_at_us INTEGER NOT NULL
            )
            """,
        ),
    ),
    Migration(
        4,
        "how often Discord has refused a finished clip",
        (
            # Kept across restarts so that the member is told once, and the retries go on
            # spacing out, rather than starting over after every restart.
            "ALTER TABLE jobs ADD COLUMN delivery_tries INTEGER NOT NULL DEFAULT 0 "
            "CHECK (delivery_tries >= 0)",
        ),
    ),
    Migration(
        5,
        "an index for the hourly clean-up of old jobs' files",
        (
            # Only the jobs that still have files: the clean-up then reads a few rows, not every
            # job ever made while the other commands wait for the database.
            "CREATE INDEX jobs_with_files ON jobs (finished_at_us) "
            "WHERE input_path IS NOT NULL OR output_path IS NOT NULL",
        ),
    ),
    Migration(
        6,
        "members' own defaults for /animate",
        (
            # One row per member, in every server the bot serves (a member's taste in format
            # or motion is theirs, not a server's); NULL: no default of their own for that one.
            """
            CREATE TABLE member_defaults (
                user_id INTEGER PRIMARY KEY,
                preset TEXT,  -- a name the service checks: presets may come and go
                motion_bucket_id INTEGER CHECK (motion_bucket_id BETWEEN 0 AND 255),
                format TEXT CHECK (format IN ('mp4', 'gif')),
                fps INTEGER CHECK (fps BETWEEN 1 AND 30),
                quality TEXT CHECK (quality IN ('best', 'draft')),
                updated_at_us INTEGER NOT NULL
            )
            """,
        ),
    ),
    Migration(
        7,
        "clips of a picture marked as a spoiler are posted as spoilers",
        (
            "ALTER TABLE jobs ADD COLUMN spoiler INTEGER NOT NULL DEFAULT 0 "
            "CHECK (spoiler IN (0, 1))",
        ),
    ),
    Migration(
        8,
        "where a clip was posted, for /history's links",
        (
            # Not always the job's channel: a DM, or the channel of the /queue that posted it.
            "ALTER TABLE jobs ADD COLUMN clip_url TEXT",
        ),
    ),
    Migration(
        9,
        "members' own defaults for bounce and smooth clips and how a picture is fitted",
        (
            # Only ever 1: a member who turns one off has no default of their own for it.
            "ALTER TABLE member_defaults ADD COLUMN ping_pong INTEGER CHECK (ping_pong = 1)",
            "ALTER TABLE member_defaults ADD COLUMN interpolate INTEGER CHECK (interpolate = 1)",
            "ALTER TABLE member_defaults ADD COLUMN fit TEXT CHECK (fit IN ('crop', 'whole'))",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def user_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def migrate(conn: aiosqlite.Connection, *, target: int = LATEST_VERSION) -> int:
    """Apply the migrations after the file's version, up to `target`; returns the new version.

    `conn` must be in autocommit mode (isolation_level=None). Safe against another process
    migrating the same file at the same time: each step re-reads the version under the write lock.
    """
    for migration in MIGRATIONS:
        if migration.version > target:
            break
        await conn.execute("BEGIN IMMEDIATE")
        try:
            if await user_version(conn) >= migration.version:
                await conn.execute("COMMIT")
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            # PRAGMA takes no bound parameters; the value is our own integer.
            await conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
    return await user_version(conn)

"""The bot's SQLite database: quotas, jobs, guild settings and the moderators' audit log.

Knows nothing of Discord or torch. Build it once at start and pass the stores down:

    db = await Database.open(settings.database_path)
    guilds = GuildSettingsStore(db, default_limit=5, default_period="day")
    quotas = QuotaStore(db, settings=guilds)
    jobs = JobStore(db)
    ...
    await db.close()
"""

from storage.audit import AuditEntry
from storage.database import Database
from storage.errors import (
    DatabaseUnreadable,
    IllegalTransition,
    JobExists,
    JobNotFound,
    QuotaExceeded,
    SchemaTooNew,
    StorageError,
)
from storage.jobs import JobRecord, JobState, JobStore
from storage.quota_rules import Period, QuotaRule, QuotaStatus
from storage.quotas import QuotaStore, RoleLimit
from storage.settings import GuildSettings, GuildSettingsStore

__all__ = [
    "AuditEntry",
    "Database",
    "DatabaseUnreadable",
    "GuildSettings",
    "GuildSettingsStore",
    "IllegalTransition",
    "JobExists",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobStore",
    "Period",
    "QuotaExceeded",
    "QuotaRule",
    "QuotaStatus",
    "QuotaStore",
    "RoleLimit",
    "SchemaTooNew",
    "StorageError",
]

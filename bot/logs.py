"""Logging: one line per record with the job id when there is one, and the bot token and
interaction tokens redacted wherever they might appear (they never should; this is the belt to
the braces)."""

from __future__ import annotations

import logging
import re

from bot.settings import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(job)s: %(message)s"

# An interaction's token sits in the URLs that answer it: /webhooks/{app}/{token}/… and
# /interactions/{id}/{token}/callback. aiohttp names the URL in its connection errors, so a
# network failure would otherwise log a token that lets anyone post as the bot for 15 minutes.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/?#\s'\"]+")


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[token]")
    return _URL_TOKEN.sub(r"\1[token]", text)


class ContextFilter(logging.Filter):
    """Adds ` [job=…]` to records that carry a job id, and hides the token."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None)
        record.job = f" [job={job_id[:8]}]" if isinstance(job_id, str) else ""
        message = record.getMessage()
        redacted = redact(message, self._secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class RedactingFormatter(logging.Formatter):
    """Hides the token in the whole formatted record: the filter only sees the message, and a
    traceback (an exception's text, a local in a chained message) is added after it."""

    def __init__(self, fmt: str, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(fmt)
        self._secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure_logging(settings: Settings) -> None:
    # Stripped, as `require_token` logs in with it: a token read with a trailing newline (a
    # secret mounted from a file) would otherwise never match what discord.py sends.
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(FORMAT, (token,)))
    handler.addFilter(ContextFilter((token,)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # discord.py's gateway chatter is noise at INFO.
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))
    # aiosqlite logs every statement with its parameters at DEBUG, a job's interaction token
    # among them.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))

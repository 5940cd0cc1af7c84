"""The errors the fake Discord answers with, in Discord's own JSON shape and codes.

discord.py turns `{"code", "message", "errors"}` into `HTTPException.code` / `.text`, so a bot's
error handling is exercised only if the fake answers exactly as Discord would.
"""

from __future__ import annotations

from typing import Any

# Form errors nest like the request body: {"content": {"_errors": [...]}, "embeds": {"0": {...}}}.
FormErrors = dict[str, Any]


class DiscordHTTPError(Exception):
    """An error answer: raised anywhere in the fake, turned into a response at the edge."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: FormErrors | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def form_error(code: str, message: str) -> FormErrors:
    """One leaf of a form error tree."""
    return {"_errors": [{"code": code, "message": message}]}


def invalid_form_body(errors: FormErrors) -> DiscordHTTPError:
    return DiscordHTTPError(400, 50035, "Invalid Form Body", errors=errors)


def unauthorized() -> DiscordHTTPError:
    return DiscordHTTPError(401, 0, "401: Unauthorized")


def invalid_webhook_token() -> DiscordHTTPError:
    # What an interaction token answers once its 15 minutes are over.
    return DiscordHTTPError(401, 50027, "Invalid Webhook Token")


def unknown_interaction() -> DiscordHTTPError:
    # A first answer later than 3 s, or to an interaction Discord never sent.
    return DiscordHTTPError(404, 10062, "Unknown interaction")


def already_acknowledged() -> DiscordHTTPError:
    return DiscordHTTPError(400, 40060, "Interaction has already been acknowledged.")


def unknown_webhook() -> DiscordHTTPError:
    return DiscordHTTPError(404, 10015, "Unknown Webhook")


def unknown_message() -> DiscordHTTPError:
    return DiscordHTTPError(404, 10008, "Unknown Message")


def unknown_channel() -> DiscordHTTPError:
    return DiscordHTTPError(404, 10003, "Unknown Channel")


def unknown_guild() -> DiscordHTTPError:
    return DiscordHTTPError(404, 10004, "Unknown Guild")


def unknown_user() -> DiscordHTTPError:
    return DiscordHTTPError(404, 10013, "Unknown User")


def unknown_member() -> DiscordHTTPError:
    return DiscordHTTPError(404, 10007, "Unknown Member")


def missing_access() -> DiscordHTTPError:
    return DiscordHTTPError(403, 50001, "Missing Access")


def missing_permissions() -> DiscordHTTPError:
    return DiscordHTTPError(403, 50013, "Missing Permissions")


def cannot_send_to_user() -> DiscordHTTPError:
    return DiscordHTTPError(403, 50007, "Cannot send messages to this user")


def cannot_edit_others_message() -> DiscordHTTPError:
    return DiscordHTTPError(403, 50005, "Cannot edit a message authored by another user")


def empty_message() -> DiscordHTTPError:
    return DiscordHTTPError(400, 50006, "Cannot send an empty message")


def entity_too_large() -> DiscordHTTPError:
    return DiscordHTTPError(413, 40005, "Request entity too large")


def not_found_route() -> DiscordHTTPError:
    return DiscordHTTPError(404, 0, "404: Not Found")


def method_not_allowed() -> DiscordHTTPError:
    return DiscordHTTPError(405, 0, "405: Method Not Allowed")


def bad_json() -> DiscordHTTPError:
    return DiscordHTTPError(400, 50109, "The request body contains invalid JSON.")

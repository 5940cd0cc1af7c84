"""The fake's messages and attachments: created, edited and deleted as Discord would.

Uploads become attachments with signed, expiring CDN URLs that point back at the fake, so a
test can read what a message shows right now (`store.get(id)`) and download what it carries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import mimetypes
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from tests.fakes import discord_errors as errors
from tests.fakes.discord_models import (
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    FakeAttachment,
    FakeMessage,
    UploadedFile,
)
from tests.fakes.discord_time import FakeClock, Snowflakes
from tests.fakes.discord_validation import validate_message_body

ATTACHMENT_URL_LIFETIME = 24 * 3600.0  # Discord's signed CDN links last about a day
SETTABLE_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2 | 1 << 13
FILE_FIELD = re.compile(r"files\[(\d+)\]|file(\d*)")


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except Exception:
        return None, None


def _content_type(filename: str, sent: str) -> str:
    # discord.py labels every file application/octet-stream; Discord sniffs the real type.
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    return sent or "application/octet-stream"


def check_upload_sizes(files: Sequence[UploadedFile], limit: int) -> None:
    """Discord refuses the whole request if any one file is over the limit."""
    if any(f.size > limit for f in files):
        raise errors.entity_too_large()


class MessageStore:
    def __init__(self, snowflakes: Snowflakes, clock: FakeClock, base_url: Callable[[], str]):
        self._snowflakes = snowflakes
        self._clock = clock
        self._base_url = base_url
        self._messages: dict[int, FakeMessage] = {}
        self._attachments: dict[int, FakeAttachment] = {}

    # Attachments and the CDN

    def add_attachment(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        content_type: str = "",
        *,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> FakeAttachment:
        attachment_id = self._snowflakes.next()
        now = self._clock.time()
        expires = now + ATTACHMENT_URL_LIFETIME
        signature = hashlib.sha256(f"{attachment_id}:{int(expires)}".encode()).hexdigest()
        query = f"?ex={int(expires):x}&is={int(now):x}&hm={signature}&"
        path = f"/attachments/{channel_id}/{attachment_id}/{quote(filename)}{query}"
        base = self._base_url()
        width, height = _image_size(data)
        attachment = FakeAttachment(
            id=attachment_id,
            channel_id=channel_id,
            filename=filename,
            data=data,
            content_type=content_type or _content_type(filename, ""),
            url=f"{base}/cdn{path}",
            proxy_url=f"{base}/media{path}",
            expires_at=expires,
            width=width,
            height=height,
            description=description,
            ephemeral=ephemeral,
        )
        self._attachments[attachment_id] = attachment
        return attachment

    def cdn_get(self, attachment_id: int, filename: str, expiry_hex: str) -> FakeAttachment | None:
        """The attachment behind a CDN URL, or None where Discord's CDN would answer 404."""
        attachment = self._attachments.get(attachment_id)
        if attachment is None or attachment.filename != filename:
            return None
        try:
            expires = int(expiry_hex, 16)
        except ValueError:
            return None
        if expires != int(attachment.expires_at) or self._clock.time() >= expires:
            return None
        return attachment

    def _new_attachments(
        self, body: dict[str, Any], files: Sequence[UploadedFile], channel_id: int, ephemeral: bool
    ) -> list[FakeAttachment]:
        by_index: dict[int, UploadedFile] = {}
        for position, upload in enumerate(files):
            match = FILE_FIELD.fullmatch(upload.form_field)
            index = position
            if match and match.group(1) is not None:
                index = int(match.group(1))
            by_index[index] = upload
        described = {
            int(a["id"]): a
            for a in body.get("attachments") or []
            if isinstance(a, dict) and str(a.get("id", "")).isdigit() and int(a["id"]) in by_index
        }
        created = []
        for index, upload in sorted(by_index.items()):
            meta = described.get(index, {})
            filename = meta.get("filename") or upload.filename
            created.append(
                self.add_attachment(
                    channel_id,
                    filename,
                    upload.data,
                    _content_type(filename, upload.content_type),
                    description=meta.get("description"),
                    ephemeral=ephemeral,
                )
            )
        return created

    # Messages

    def get(self, message_id: int) -> FakeMessage | None:
        return self._messages.get(message_id)

    def by_author(self, author_id: int) -> list[FakeMessage]:
        return [m for m in self._messages.values() if m.author_id == author_id and not m.deleted]

    def in_channel(self, channel_id: int, *, include_deleted: bool = False) -> list[FakeMessage]:
        return [
            m
            for m in self._messages.values()
            if m.channel_id == channel_id and (include_deleted or not m.deleted)
        ]

    def all(self) -> list[FakeMessage]:
        return list(self._messages.values())

    def create(
        self,
        *,
        channel_id: int,
        guild_id: int | None,
        author_id: int,
        body: dict[str, Any],
        files: Sequence[UploadedFile] = (),
        message_type: int = 0,
        webhook_id: int | None = None,
        interaction_id: int | None = None,
        allow_ephemeral: bool = False,
        loading: bool = False,
    ) -> FakeMessage:
        requested = int(body.get("flags") or 0)
        flags = requested & SETTABLE_FLAGS
        if allow_ephemeral and requested & FLAG_EPHEMERAL:
            flags |= FLAG_EPHEMERAL
        if loading:
            flags |= FLAG_LOADING
        form = validate_message_body(body, len(files), flags=flags)
        if form:
            raise errors.invalid_form_body(form)
        reference_id = self._reference(body.get("message_reference"), channel_id)
        if reference_id is not None and message_type == 0:
            message_type = 19  # a reply
        message = FakeMessage(
            id=self._snowflakes.next(),
            channel_id=channel_id,
            guild_id=guild_id,
            author_id=author_id,
            created_at=self._clock.now(),
            content=body.get("content") or "",
            embeds=tuple(body.get("embeds") or ()),
            components=tuple(body.get("components") or ()),
            flags=flags,
            type=message_type,
            webhook_id=webhook_id,
            interaction_id=interaction_id,
            reference_id=reference_id,
            nonce=str(body["nonce"]) if body.get("nonce") else None,
        )
        if not loading and not self._has_content(message, has_files=bool(files)):
            raise errors.empty_message()
        attachments = self._new_attachments(body, files, channel_id, message.ephemeral)
        message = dataclasses.replace(message, attachments=tuple(attachments))
        self._messages[message.id] = message
        return message

    def _reference(self, reference: Any, channel_id: int) -> int | None:
        """The replied-to message's id; a missing one (deleted, elsewhere, or ephemeral: those
        cannot be replied to) fails the send unless `fail_if_not_exists` is false, in which
        case the message goes out as a plain one."""
        if not isinstance(reference, dict) or not reference.get("message_id"):
            return None
        target = self._messages.get(int(reference["message_id"]))
        if target is not None and not target.deleted and not target.ephemeral:
            if target.channel_id == channel_id:
                return target.id
        if reference.get("fail_if_not_exists", True):
            raise errors.invalid_form_body(
                {
                    "message_reference": errors.form_error(
                        "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
                }
            )
        return None

    def edit(
        self, message_id: int, body: dict[str, Any], files: Sequence[UploadedFile] = ()
    ) -> FakeMessage:
        old = self._messages.get(message_id)
        if old is None or old.deleted:
            raise errors.unknown_message()
        flags = old.flags & ~FLAG_LOADING
        if "flags" in body and body["flags"] is not None:
            # Only embed suppression can be changed by an edit.
            flags = (flags & ~FLAG_SUPPRESS_EMBEDS) | (int(body["flags"]) & FLAG_SUPPRESS_EMBEDS)
            flags |= int(body["flags"]) & FLAG_COMPONENTS_V2
        form = validate_message_body(body, len(files), flags=flags)
        if form:
            raise errors.invalid_form_body(form)
        changes: dict[str, Any] = {"flags": flags}
        if "content" in body:
            changes["content"] = body["content"] or ""
        if "embeds" in body:
            changes["embeds"] = tuple(body["embeds"] or ())
        if "components" in body:
            changes["components"] = tuple(body["components"] or ())
        kept = list(old.attachments)
        if isinstance(body.get("attachments"), list):
            # API v10: the list names every attachment that stays; new ones come as files.
            keep_ids = {str(a.get("id")) for a in body["attachments"] if isinstance(a, dict)}
            kept = [a for a in old.attachments if str(a.id) in keep_ids]
        candidate = dataclasses.replace(old, **changes, attachments=tuple(kept))
        if not self._has_content(candidate, has_files=bool(files)):
            raise errors.empty_message()
        new = self._new_attachments(body, files, old.channel_id, old.ephemeral)
        message = dataclasses.replace(
            candidate,
            attachments=(*kept, *new),
            edited_at=self._clock.now(),
            edits=old.edits + 1,
        )
        self._messages[message_id] = message
        return message

    def forward(
        self, original: FakeMessage, snapshot: dict[str, Any], *, channel_id: int, author_id: int
    ) -> FakeMessage:
        """A user forwards `original` here: a message of its own with no content or files,
        carrying the original as it was (`snapshot`, its payload's forwardable part)."""
        message = FakeMessage(
            id=self._snowflakes.next(),
            channel_id=channel_id,
            guild_id=original.guild_id,
            author_id=author_id,
            created_at=self._clock.now(),
            reference_id=original.id,
            snapshots=(snapshot,),
        )
        self._messages[message.id] = message
        return message

    def unfurl(self, message_id: int, embed: dict[str, Any]) -> FakeMessage:
        """Discord adds a link's preview to a message after it was posted (not an edit: the
        message shows no 'edited')."""
        old = self._messages[message_id]
        message = dataclasses.replace(old, embeds=(*old.embeds, embed))
        self._messages[message_id] = message
        return message

    def delete(self, message_id: int) -> FakeMessage:
        old = self._messages.get(message_id)
        if old is None or old.deleted:
            raise errors.unknown_message()
        message = dataclasses.replace(old, deleted=True)
        self._messages[message_id] = message
        return message

    @staticmethod
    def _has_content(message: FakeMessage, *, has_files: bool) -> bool:
        return bool(
            message.content
            or message.embeds
            or message.attachments
            or has_files
            or message.components
        )

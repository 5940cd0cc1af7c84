"""The fake Discord's state and rules, with no HTTP or websocket in sight.

REST handlers and test helpers both call into this: users and guilds, synced commands, messages,
and the life of each interaction (3 s to answer, 15 minutes of token, one first answer only).
Every refusal is a `DiscordHTTPError` carrying Discord's status and code.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import discord_errors as errors
from tests.fakes.discord_messages import MessageStore, check_upload_sizes
from tests.fakes.discord_models import (
    ATTACH_FILES,
    DEFAULT_BOT_PERMISSIONS,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    FakeChannel,
    FakeGuild,
    FakeMessage,
    FakeUser,
    MiB,
    UploadedFile,
)
from tests.fakes.discord_payloads import THREAD_TYPES, message_payload, user_payload
from tests.fakes.discord_time import FakeClock, Snowflakes
from tests.fakes.discord_validation import validate_commands

FIRST_ANSWER_DEADLINE = 3.0
TOKEN_LIFETIME = 15 * 60.0
# How long Discord remembers a message's nonce for `enforce_nonce` ("the past few minutes").
NONCE_WINDOW = datetime.timedelta(minutes=5)
COMMAND = 2
COMPONENT = 3
MODAL_SUBMIT = 5
# Callback types: 4 reply, 5 deferred reply, 6 deferred update, 7 update, 9 modal.
CALLBACK_TYPES = {COMMAND: {4, 5, 9}, COMPONENT: {4, 5, 6, 7, 9}, MODAL_SUBMIT: {4, 5, 6, 7}}

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass
class InteractionRecord:
    """One interaction's life as Discord tracks it."""

    id: int
    token: str
    type: int
    guild_id: int | None
    channel_id: int
    user: FakeUser
    created_at: float  # fake-clock seconds
    attachment_size_limit: int
    payload: dict[str, Any]
    command_name: str | None = None
    source_message_id: int | None = None  # the message a clicked component sits on
    response_type: int | None = None
    responded_at: float | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None


class DiscordWorld:
    def __init__(
        self,
        *,
        clock: FakeClock,
        snowflakes: Snowflakes,
        bot_token: str,
        base_url: Callable[[], str],
        bot_name: str = "SVD Bot",
    ) -> None:
        self.clock = clock
        self.snowflakes = snowflakes
        self.bot_token = bot_token
        self.application_id = snowflakes.next()
        self.bot_user = FakeUser(id=self.application_id, username=bot_name, bot=True)
        self.owner = FakeUser(id=snowflakes.next(), username="owner")
        self.users: dict[int, FakeUser] = {u.id: u for u in (self.bot_user, self.owner)}
        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.messages = MessageStore(snowflakes, clock, base_url)
        self.interactions: dict[int, InteractionRecord] = {}
        self.enforce_first_answer_deadline = True
        # Channel overwrites that deny the bot permissions there: channel id -> denied bits.
        self.bot_denied_in: dict[int, int] = {}
        # Users who take no DMs from the bot ("Allow direct messages from server members" off).
        self.closed_dms: set[int] = set()
        self.emit: EventSink = lambda event, data: None

    # People and places

    def add_user(self, username: str, *, bot: bool = False) -> FakeUser:
        user = FakeUser(id=self.snowflakes.next(), username=username, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self, name: str, *, premium_tier: int = 0, owner: FakeUser | None = None
    ) -> FakeGuild:
        guild = FakeGuild(
            id=self.snowflakes.next(),
            name=name,
            owner_id=(owner or self.owner).id,
            premium_tier=premium_tier,
            new_id=self.snowflakes.next,
        )
        bot_role = guild.add_role(self.bot_user.username, DEFAULT_BOT_PERMISSIONS)
        guild.add_member(self.bot_user, roles=[bot_role])
        guild.add_member(owner or self.owner)
        self.guilds[guild.id] = guild
        return guild

    def channel(self, channel_id: int) -> FakeChannel:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild.channels[channel_id]
        if channel_id in self.dm_channels:
            return self.dm_channels[channel_id]
        raise errors.unknown_channel()

    def dm_channel(self, user_id: int) -> FakeChannel:
        for channel in self.dm_channels.values():
            if channel.recipient_id == user_id:
                return channel
        if user_id not in self.users:
            raise errors.unknown_user()
        channel = FakeChannel(id=self.snowflakes.next(), name="", type=1, recipient_id=user_id)
        self.dm_channels[channel.id] = channel
        return channel

    def bot_permissions(self, guild_id: int | None) -> int:
        if guild_id is None:
            return DEFAULT_BOT_PERMISSIONS
        return self.guilds[guild_id].permissions_of(self.bot_user.id)

    def bot_permissions_in(self, channel: FakeChannel) -> int:
        """The bot's permissions in `channel`: its guild's, less what an overwrite denies (a
        thread has its parent channel's overwrites)."""
        denied = self.bot_denied_in.get(channel.id, 0)
        if channel.type in THREAD_TYPES and channel.parent_id is not None:
            denied |= self.bot_denied_in.get(channel.parent_id, 0)
        return self.bot_permissions(channel.guild_id) & ~denied

    def upload_limit(self, guild_id: int | None) -> int:
        return self.guilds[guild_id].upload_limit if guild_id in self.guilds else 10 * MiB

    # Commands

    def sync_commands(self, body: Any, guild_id: int | None) -> list[dict[str, Any]]:
        """A bulk overwrite: validated like Discord, ids kept for commands that keep their name."""
        if guild_id is not None and guild_id not in self.guilds:
            raise errors.unknown_guild()
        form = validate_commands(body, is_global=guild_id is None)
        if form:
            raise errors.invalid_form_body(form)
        previous = (
            self.global_commands if guild_id is None else self.guild_commands.get(guild_id, [])
        )
        old_ids = {(c.get("type", 1), c["name"]): c["id"] for c in previous}
        stored = []
        for command in body:
            kind = command.get("type", 1)
            entry = {
                "type": kind,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                **command,
                "id": old_ids.get((kind, command["name"])) or str(self.snowflakes.next()),
                "application_id": str(self.application_id),
                "version": str(self.snowflakes.next()),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        if guild_id is None:
            self.global_commands = stored
        else:
            self.guild_commands[guild_id] = stored
        return stored

    def find_command(self, name: str, guild_id: int | None, kind: int = 1) -> dict[str, Any] | None:
        scopes = [self.guild_commands.get(guild_id, [])] if guild_id is not None else []
        for scope in [*scopes, self.global_commands]:
            for command in scope:
                if command["name"] == name and command.get("type", 1) == kind:
                    return command
        return None

    # Interactions

    def new_interaction(self, **fields: Any) -> InteractionRecord:
        record = InteractionRecord(
            id=self.snowflakes.next(),
            token="aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48),
            created_at=self.clock.time(),
            **fields,
        )
        self.interactions[record.id] = record
        return record

    def interaction_by_token(self, token: str) -> InteractionRecord | None:
        return next((r for r in self.interactions.values() if r.token == token), None)

    def _webhook_interaction(self, application_id: int, token: str) -> InteractionRecord:
        """The interaction behind a webhook token, if the token still works."""
        record = self.interaction_by_token(token)
        if application_id != self.application_id or record is None:
            raise errors.unknown_webhook()
        if self.clock.time() - record.created_at >= TOKEN_LIFETIME:
            raise errors.invalid_webhook_token()
        if record.response_type is None:
            # Followups and edits need the first answer first.
            raise errors.unknown_webhook()
        self.channel(record.channel_id)  # a deleted channel answers 10003 here too
        return record

    def respond(
        self, interaction_id: int, token: str, body: Any, files: Sequence[UploadedFile]
    ) -> tuple[InteractionRecord, FakeMessage | None]:
        """The first answer (POST /interactions/{id}/{token}/callback)."""
        record = self.interactions.get(interaction_id)
        if record is None or record.token != token:
            raise errors.unknown_interaction()
        age = self.clock.time() - record.created_at
        if age >= TOKEN_LIFETIME:
            raise errors.unknown_interaction()
        if record.response_type is not None:
            raise errors.already_acknowledged()
        if self.enforce_first_answer_deadline and age > FIRST_ANSWER_DEADLINE:
            raise errors.unknown_interaction()
        if not isinstance(body, dict):
            raise errors.bad_json()
        callback_type = body.get("type")
        if callback_type not in CALLBACK_TYPES.get(record.type, set()):
            raise errors.invalid_form_body(
                {"type": errors.form_error("INTERACTION_RESPONSE_TYPE_INVALID", "Invalid type")}
            )
        data = body.get("data") or {}
        check_upload_sizes(files, record.attachment_size_limit)
        message: FakeMessage | None = None
        if callback_type in (4, 5):
            message = self._create_message(
                record, data, files, loading=callback_type == 5, original=True
            )
            record.original_message_id = message.id
        elif callback_type in (6, 7):
            if record.source_message_id is None:
                raise errors.unknown_message()
            record.original_message_id = record.source_message_id
            if callback_type == 7:
                message = self.edit_message(record.source_message_id, data, files)
            else:
                message = self.messages.get(record.source_message_id)
        elif callback_type == 9:
            self._check_modal(data)
            record.modal = data
        record.response_type = callback_type
        record.responded_at = self.clock.time()
        return record, message

    @staticmethod
    def _check_modal(data: dict[str, Any]) -> None:
        problems: errors.FormErrors = {}
        if not 1 <= len(data.get("custom_id") or "") <= 100:
            problems["custom_id"] = errors.form_error(
                "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        if not 1 <= len(data.get("title") or "") <= 45:
            problems["title"] = errors.form_error(
                "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
            )
        if not 1 <= len(data.get("components") or []) <= 5:
            problems["components"] = errors.form_error(
                "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        if problems:
            raise errors.invalid_form_body(problems)

    def _create_message(
        self,
        record: InteractionRecord,
        data: dict[str, Any],
        files: Sequence[UploadedFile],
        *,
        loading: bool = False,
        original: bool = False,
    ) -> FakeMessage:
        message = self.messages.create(
            channel_id=record.channel_id,
            guild_id=record.guild_id,
            author_id=self.bot_user.id,
            body=data,
            files=files,
            message_type=20 if original and record.type == COMMAND else 0,
            webhook_id=self.application_id,
            interaction_id=record.id,
            allow_ephemeral=True,
            loading=loading,
        )
        if not message.ephemeral:
            self.emit("MESSAGE_CREATE", self.message_json(message))
        return message

    def followup(
        self, application_id: int, token: str, body: Any, files: Sequence[UploadedFile]
    ) -> FakeMessage:
        record = self._webhook_interaction(application_id, token)
        check_upload_sizes(files, record.attachment_size_limit)
        if not isinstance(body, dict):
            raise errors.bad_json()
        original = self.messages.get(record.original_message_id or 0)
        if record.response_type == 5 and original is not None and original.loading:
            # Discord reads a followup sent while the deferred answer still shows "thinking" as
            # the answer itself: it edits the original, which keeps the defer's ephemerality
            # whatever flags the followup asks for.
            return self.edit_message(
                original.id, {k: v for k, v in body.items() if k != "flags"}, files
            )
        message = self._create_message(record, body, files)
        record.followup_ids.append(message.id)
        return message

    def _interaction_message_id(self, record: InteractionRecord, ref: str) -> int:
        if ref == "@original":
            if record.original_message_id is None:
                raise errors.unknown_message()
            return record.original_message_id
        if not ref.isdigit():
            raise errors.unknown_message()
        message_id = int(ref)
        if message_id != record.original_message_id and message_id not in record.followup_ids:
            raise errors.unknown_message()
        return message_id

    def webhook_message(self, application_id: int, token: str, ref: str) -> FakeMessage:
        record = self._webhook_interaction(application_id, token)
        message = self.messages.get(self._interaction_message_id(record, ref))
        if message is None or message.deleted:
            raise errors.unknown_message()
        return message

    def webhook_edit(
        self, application_id: int, token: str, ref: str, body: Any, files: Sequence[UploadedFile]
    ) -> FakeMessage:
        record = self._webhook_interaction(application_id, token)
        check_upload_sizes(files, record.attachment_size_limit)
        if not isinstance(body, dict):
            raise errors.bad_json()
        return self.edit_message(self._interaction_message_id(record, ref), body, files)

    def webhook_delete(self, application_id: int, token: str, ref: str) -> None:
        record = self._webhook_interaction(application_id, token)
        self.delete_message(self._interaction_message_id(record, ref))

    # Messages through the bot token

    def _visible_message(self, channel_id: int, message_id: int) -> FakeMessage:
        self.channel(channel_id)
        message = self.messages.get(message_id)
        # Ephemeral messages exist only for their interaction's token.
        if (
            message is None
            or message.deleted
            or message.channel_id != channel_id
            or message.ephemeral
        ):
            raise errors.unknown_message()
        return message

    def _require(self, channel: FakeChannel, permissions: int) -> None:
        if channel.guild_id is None:
            if channel.recipient_id in self.closed_dms:
                raise errors.cannot_send_to_user()
            return
        have = self.bot_permissions_in(channel)
        if not have & VIEW_CHANNEL:
            raise errors.missing_access()
        if have & permissions != permissions:
            raise errors.missing_permissions()

    def channel_send(
        self, channel_id: int, body: Any, files: Sequence[UploadedFile]
    ) -> FakeMessage:
        channel = self.channel(channel_id)
        if not isinstance(body, dict):
            raise errors.bad_json()
        # In a thread it is Send Messages in Threads that counts; Send Messages has no effect.
        send = SEND_MESSAGES_IN_THREADS if channel.type in THREAD_TYPES else SEND_MESSAGES
        needed = send | (ATTACH_FILES if files else 0)
        if body.get("message_reference"):
            needed |= READ_MESSAGE_HISTORY  # replying needs it
        self._require(channel, needed)
        check_upload_sizes(files, self.upload_limit(channel.guild_id))
        repeated = self._repeated_nonce(body)
        if repeated is not None:
            return repeated
        message = self.messages.create(
            channel_id=channel_id,
            guild_id=channel.guild_id,
            author_id=self.bot_user.id,
            body=body,  # not allow_ephemeral: only interaction answers can be ephemeral
            files=files,
        )
        self.emit("MESSAGE_CREATE", self.message_json(message))
        return message

    def _repeated_nonce(self, body: dict[str, Any]) -> FakeMessage | None:
        """With `enforce_nonce`, Discord answers a message whose nonce the same author used in
        the past few minutes with that message, and creates none."""
        nonce = body.get("nonce")
        if not body.get("enforce_nonce") or not nonce:
            return None
        since = self.clock.now() - NONCE_WINDOW
        for message in self.messages.by_author(self.bot_user.id):
            if message.nonce == str(nonce) and message.created_at >= since:
                return message
        return None

    def channel_history(self, channel_id: int) -> list[FakeMessage]:
        channel = self.channel(channel_id)
        self._require(channel, 0)  # View Channel
        # As Discord does: without Read Message History the list is empty, not an error.
        if (
            channel.guild_id is not None
            and self.bot_permissions_in(channel) & READ_MESSAGE_HISTORY != READ_MESSAGE_HISTORY
        ):
            return []
        return [m for m in self.messages.in_channel(channel_id) if not m.ephemeral]

    def channel_message(self, channel_id: int, message_id: int) -> FakeMessage:
        self._require(self.channel(channel_id), READ_MESSAGE_HISTORY)
        return self._visible_message(channel_id, message_id)

    def channel_edit(
        self, channel_id: int, message_id: int, body: Any, files: Sequence[UploadedFile]
    ) -> FakeMessage:
        channel = self.channel(channel_id)
        message = self._visible_message(channel_id, message_id)
        if message.author_id != self.bot_user.id:
            raise errors.cannot_edit_others_message()
        if not isinstance(body, dict):
            raise errors.bad_json()
        self._require(channel, ATTACH_FILES if files else 0)
        check_upload_sizes(files, self.upload_limit(channel.guild_id))
        return self.edit_message(message_id, body, files)

    def channel_delete(self, channel_id: int, message_id: int) -> None:
        channel = self.channel(channel_id)
        message = self._visible_message(channel_id, message_id)
        if message.author_id != self.bot_user.id:
            self._require(channel, 1 << 13)  # manage messages
        self.delete_message(message_id)

    # Shared by both paths

    def edit_message(
        self, message_id: int, body: dict[str, Any], files: Sequence[UploadedFile]
    ) -> FakeMessage:
        message = self.messages.edit(message_id, body, files)
        if not message.ephemeral:
            self.emit("MESSAGE_UPDATE", self.message_json(message))
        return message

    def delete_message(self, message_id: int) -> None:
        message = self.messages.delete(message_id)
        if not message.ephemeral:
            data = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            self.emit("MESSAGE_DELETE", data)

    def message_json(self, message: FakeMessage) -> dict[str, Any]:
        author = self.users.get(message.author_id, self.bot_user)
        metadata = None
        record = self.interactions.get(message.interaction_id or 0)
        if record is not None:
            metadata = {
                "id": str(record.id),
                "type": record.type,
                "user": user_payload(record.user),
                "authorizing_integration_owners": {"0": str(record.guild_id)}
                if record.guild_id
                else {"1": str(record.user.id)},
            }
            if record.command_name:
                metadata["name"] = record.command_name
            if record.original_message_id not in (None, message.id):
                metadata["original_response_message_id"] = str(record.original_message_id)
            if record.source_message_id is not None:
                metadata["interacted_message_id"] = str(record.source_message_id)
        return message_payload(
            message, author, application_id=self.application_id, interaction_metadata=metadata
        )

"""Interactions as a Discord client would send them, and a handle to watch the bot's answers.

Options are typed from the synced command definitions (the fake saw the bot's sync), the way the
Discord client types what a user typed; an option the definition does not have, a missing
required option or a value outside the choices is a mistake in the test and raises ValueError.
"""

# Waits take a `timeout` so that running out of time fails the test with a dump of what the
# bot did instead, rather than a bare TimeoutError from an outer asyncio.timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakes.discord_models import (
    FakeAttachment,
    FakeChannel,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
)
from tests.fakes.discord_payloads import (
    attachment_payload,
    channel_payload,
    member_payload,
    role_payload,
    user_payload,
)
from tests.fakes.discord_recorder import RecordedRequest, Recorder
from tests.fakes.discord_world import DiscordWorld, InteractionRecord

STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = range(3, 12)

# A user's upload: raw bytes, (filename, bytes) or (filename, bytes, content_type).
AttachmentSpec = FakeAttachment | bytes | tuple[str, bytes] | tuple[str, bytes, str]


@dataclass(frozen=True)
class Option:
    """An option value with an explicit Discord type, for commands the fake has not seen."""

    type: int
    value: Any


def _infer_type(value: Any) -> int:
    if isinstance(value, Option):
        return value.type
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, FakeUser | FakeMember):
        return USER
    if isinstance(value, FakeRole):
        return ROLE
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, FakeAttachment | bytes | tuple):
        return ATTACHMENT
    return STRING


class InteractionBuilder:
    """Builds INTERACTION_CREATE payloads from the world's state."""

    def __init__(self, world: DiscordWorld) -> None:
        self.world = world

    def upload(self, spec: AttachmentSpec, channel_id: int) -> FakeAttachment:
        """Register a user's upload on the fake CDN (interaction attachments are ephemeral)."""
        if isinstance(spec, FakeAttachment):
            return spec
        if isinstance(spec, bytes):
            spec = ("image.png", spec)
        filename, data = spec[0], spec[1]
        content_type = spec[2] if len(spec) == 3 else ""
        content_type = content_type or mimetypes.guess_type(filename)[0] or ""
        return self.world.messages.add_attachment(
            channel_id, filename, data, content_type, ephemeral=True
        )

    def _convert(
        self,
        kind: int,
        name: str,
        value: Any,
        resolved: dict[str, dict[str, Any]],
        guild_id: int | None,
        channel_id: int,
    ) -> Any:
        value = value.value if isinstance(value, Option) else value
        if kind == STRING:
            return str(value)
        if kind == INTEGER:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"option {name!r} takes an integer, not {value!r}")
            return value
        if kind == NUMBER:
            return float(value)
        if kind == BOOLEAN:
            return bool(value)
        if kind == ATTACHMENT:
            attachment = self.upload(value, channel_id)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment_payload(
                attachment
            )
            return str(attachment.id)
        if kind == ROLE or (kind == MENTIONABLE and isinstance(value, FakeRole)):
            role = value if isinstance(value, FakeRole) else self._role(int(value), guild_id)
            resolved.setdefault("roles", {})[str(role.id)] = role_payload(role)
            return str(role.id)
        if kind in (USER, MENTIONABLE):
            user = value.user if isinstance(value, FakeMember) else value
            if not isinstance(user, FakeUser):
                user = self.world.users[int(user)]
            resolved.setdefault("users", {})[str(user.id)] = user_payload(user)
            guild = self.world.guilds.get(guild_id or 0)
            if guild is not None and user.id in guild.members:
                resolved.setdefault("members", {})[str(user.id)] = member_payload(
                    guild.members[user.id],
                    permissions=guild.permissions_of(user.id),
                    with_user=False,
                )
            return str(user.id)
        if kind == CHANNEL:
            channel = value if isinstance(value, FakeChannel) else self.world.channel(int(value))
            resolved.setdefault("channels", {})[str(channel.id)] = {
                "id": str(channel.id),
                "name": channel.name,
                "type": channel.type,
                "permissions": str(self.world.bot_permissions_in(channel)),
                "parent_id": str(channel.parent_id) if channel.parent_id else None,
            }
            return str(channel.id)
        raise ValueError(f"option {name!r} has type {kind}, which cannot carry a value")

    def _role(self, role_id: int, guild_id: int | None) -> FakeRole:
        guild = self.world.guilds.get(guild_id or 0)
        if guild is None or role_id not in guild.roles:
            raise ValueError(f"role {role_id} is not in the interaction's guild")
        return guild.roles[role_id]

    def command_options(
        self,
        definition: dict[str, Any] | None,
        command: str,
        path: list[str],
        values: Mapping[str, Any],
        resolved: dict[str, dict[str, Any]],
        guild_id: int | None,
        channel_id: int,
    ) -> list[dict[str, Any]]:
        """Typed options, nested under the subcommand group / subcommand in `path`."""
        specs: list[dict[str, Any]] | None = None
        if definition is not None:
            specs = definition.get("options") or []
            for step in path:
                match = next((o for o in specs if o["name"] == step and o["type"] in (1, 2)), None)
                if match is None:
                    raise ValueError(f"/{command} has no subcommand or group {step!r}")
                specs = match.get("options") or []
            if any(o["type"] in (1, 2) for o in specs):
                names = [o["name"] for o in specs]
                raise ValueError(f"/{command} needs a subcommand (one of {names})")
        leaf: list[dict[str, Any]] = []
        for name, value in values.items():
            spec = None
            if specs is not None:
                spec = next((o for o in specs if o["name"] == name), None)
                if spec is None and not isinstance(value, Option):
                    known = [o["name"] for o in specs]
                    raise ValueError(f"/{command} has no option {name!r} (it has {known})")
            kind = spec["type"] if spec else _infer_type(value)
            converted = self._convert(kind, name, value, resolved, guild_id, channel_id)
            if spec is not None:
                self._check_limits(command, spec, converted)
            leaf.append({"name": name, "type": kind, "value": converted})
        if specs is not None:
            missing = [o["name"] for o in specs if o.get("required") and o["name"] not in values]
            if missing:
                raise ValueError(f"/{command} requires options {missing}")
        # With two steps the first is a subcommand group (type 2); a last step is a subcommand.
        options = leaf
        for depth in reversed(range(len(path))):
            kind = 2 if depth == 0 and len(path) == 2 else 1
            options = [{"name": path[depth], "type": kind, "options": options}]
        return options

    @staticmethod
    def _check_limits(command: str, spec: dict[str, Any], value: Any) -> None:
        name = spec["name"]
        choices = spec.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise ValueError(f"/{command} {name}: {value!r} is not one of the choices")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if spec.get("min_value") is not None and value < spec["min_value"]:
                raise ValueError(f"/{command} {name}: {value} is below min_value")
            if spec.get("max_value") is not None and value > spec["max_value"]:
                raise ValueError(f"/{command} {name}: {value} is above max_value")
        if spec["type"] == STRING:
            if spec.get("min_length") is not None and len(value) < spec["min_length"]:
                raise ValueError(f"/{command} {name}: shorter than min_length")
            if spec.get("max_length") is not None and len(value) > spec["max_length"]:
                raise ValueError(f"/{command} {name}: longer than max_length")

    @staticmethod
    def attachment_option_name(definition: dict[str, Any] | None, path: list[str]) -> str:
        """The one attachment option of a command, for the `attachment=` shortcut."""
        if definition is None:
            return "attachment"
        specs = definition.get("options") or []
        for step in path:
            specs = next((o.get("options") or [] for o in specs if o["name"] == step), [])
        names = [o["name"] for o in specs if o["type"] == ATTACHMENT]
        if len(names) != 1:
            raise ValueError(f"attachment= needs exactly one attachment option, found {names}")
        return names[0]

    def base_payload(
        self,
        record_type: int,
        *,
        user: FakeUser,
        guild_id: int | None,
        channel: FakeChannel,
        permissions: int | None,
        role_ids: Iterable[int] | None,
        locale: str,
        attachment_size_limit: int,
        app_permissions: int | None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "application_id": str(self.world.application_id),
            "type": record_type,
            "version": 1,
            "channel_id": str(channel.id),
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": attachment_size_limit,
            "app_permissions": str(
                app_permissions
                if app_permissions is not None
                else self.world.bot_permissions_in(channel)
            ),
        }
        guild = self.world.guilds.get(guild_id or 0)
        channel_data: dict[str, Any] = {"id": str(channel.id), "type": channel.type}
        if guild is not None:
            member = guild.members.get(user.id) or FakeMember(user=user, guild_id=guild.id)
            if role_ids is not None:
                member = FakeMember(
                    user=user, guild_id=guild.id, role_ids=tuple(role_ids), nick=member.nick
                )
            resolved_permissions = (
                permissions
                if permissions is not None
                else guild.permissions_of(user.id, member.role_ids)
            )
            # Discord sends the channel's usual fields here (discord.py builds a channel from
            # them when the server is not in its cache) and the bot's permissions in it.
            channel_data.update(channel_payload(channel), permissions=payload["app_permissions"])
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member_payload(member, permissions=resolved_permissions),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
        else:
            channel_data["recipients"] = [user_payload(user)]
            payload.update(
                user=user_payload(user),
                authorizing_integration_owners={"0": str(user.id)},
                context=1,
            )
        payload["channel"] = channel_data
        return payload

    def modal_components(
        self, components: list[dict[str, Any]], values: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """What a user submits for the modal the bot showed: its inputs with the given values."""
        submitted: list[dict[str, Any]] = []
        for component in components:
            if component.get("type") == 1:
                inner = self.modal_components(component.get("components") or [], values)
                submitted.append({"type": 1, "components": inner})
            elif component.get("type") == 18:
                inner = self.modal_components([component["component"]], values)
                submitted.append({"type": 18, "component": inner[0]})
            elif "custom_id" in component:
                custom_id = component["custom_id"]
                value = values.get(custom_id, component.get("value", ""))
                entry: dict[str, Any] = {"type": component["type"], "custom_id": custom_id}
                if component["type"] == 4:
                    entry["value"] = value
                else:
                    entry["values"] = list(value) if isinstance(value, list | tuple) else [value]
                submitted.append(entry)
        return submitted


class InteractionHandle:
    """What the bot did with one interaction, read live from the fake's state."""

    def __init__(self, record: InteractionRecord, world: DiscordWorld, recorder: Recorder):
        self._record = record
        self._world = world
        self._recorder = recorder
        self._handed_out: set[int] = set()

    def __repr__(self) -> str:
        record = self._record
        return f"<InteractionHandle {record.id} type={record.type} answer={record.response_type}>"

    @property
    def id(self) -> int:
        return self._record.id

    @property
    def token(self) -> str:
        return self._record.token

    @property
    def payload(self) -> dict[str, Any]:
        return self._record.payload

    @property
    def response_type(self) -> int | None:
        """The first answer's callback type: 4 reply, 5 deferred, 6 deferred update, 7 update,
        9 modal; None while unanswered."""
        return self._record.response_type

    @property
    def deferred(self) -> bool:
        return self._record.response_type in (5, 6)

    @property
    def original(self) -> FakeMessage | None:
        message_id = self._record.original_message_id
        return None if message_id is None else self._world.messages.get(message_id)

    @property
    def ephemeral(self) -> bool:
        original = self.original
        return original is not None and original.ephemeral

    @property
    def followups(self) -> list[FakeMessage]:
        found = (self._world.messages.get(i) for i in self._record.followup_ids)
        return [m for m in found if m is not None]

    @property
    def modal(self) -> dict[str, Any] | None:
        return self._record.modal

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request the bot made with this interaction's id or token."""
        return self._recorder.matching(
            lambda r: r.token == self.token or r.interaction_id == self.id
        )

    async def wait_response(self, timeout: float = 5.0) -> int:
        return await self._recorder.wait_until(
            lambda: self._record.response_type, timeout, f"a first answer to interaction {self.id}"
        )

    async def wait_original(
        self, predicate: Callable[[FakeMessage], bool] | None = None, timeout: float = 5.0
    ) -> FakeMessage:
        """The original message once `predicate` holds (default: no longer "thinking")."""
        check = predicate or (lambda m: not m.loading)

        def ready() -> FakeMessage | None:
            original = self.original
            return original if original is not None and check(original) else None

        return await self._recorder.wait_until(ready, timeout, f"the original of {self.id}")

    async def wait_followup(
        self, predicate: Callable[[FakeMessage], bool] | None = None, timeout: float = 5.0
    ) -> FakeMessage:
        """The next followup message (in order, each handed out once) satisfying `predicate`.

        Only separate messages count: the first followup after a defer that is still
        "thinking" becomes the original instead (see `wait_message`)."""

        def find() -> FakeMessage | None:
            for message in self.followups:
                if message.id not in self._handed_out and (predicate is None or predicate(message)):
                    self._handed_out.add(message.id)
                    return message
            return None

        return await self._recorder.wait_until(find, timeout, f"a followup to {self.id}")

    @property
    def messages(self) -> list[FakeMessage]:
        """The original (if any) and the followups, as they are now."""
        original = self.original
        return ([original] if original is not None else []) + self.followups

    async def wait_message(
        self, predicate: Callable[[FakeMessage], bool] | None = None, timeout: float = 5.0
    ) -> FakeMessage:
        """The next message of this interaction, original or followup, satisfying `predicate`,
        each handed out once. Use it where a followup may have become the original: a followup
        sent while a deferred answer is still "thinking" edits the original on Discord."""

        def find() -> FakeMessage | None:
            for message in self.messages:
                if message.id not in self._handed_out and (predicate is None or predicate(message)):
                    self._handed_out.add(message.id)
                    return message
            return None

        return await self._recorder.wait_until(find, timeout, f"a message of {self.id}")

    async def next_message_with_file(self, timeout: float = 5.0) -> FakeMessage:
        return await self.wait_message(lambda m: bool(m.attachments), timeout)

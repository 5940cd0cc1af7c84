"""What the fake Discord knows about: users, guilds with roles, channels and members, messages.

Values are frozen snapshots; a `FakeGuild` is the one mutable container, so a test can add a
role, a channel or a member before (or after) the bot connects.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord

MiB = 1024 * 1024

# Discord's per-file upload limit by boost tier (10 MiB since January 2025).
UPLOAD_LIMIT_BY_TIER = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}

ADMINISTRATOR = discord.Permissions(administrator=True).value
ALL_PERMISSIONS = discord.Permissions.all().value
VIEW_CHANNEL = discord.Permissions(view_channel=True).value
SEND_MESSAGES = discord.Permissions(send_messages=True).value
SEND_MESSAGES_IN_THREADS = discord.Permissions(send_messages_in_threads=True).value
ATTACH_FILES = discord.Permissions(attach_files=True).value
READ_MESSAGE_HISTORY = discord.Permissions(read_message_history=True).value

# What @everyone may do in a fresh server, roughly: read, talk, attach, use commands.
DEFAULT_EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    add_reactions=True,
    use_application_commands=True,
).value

# What a bot is usually invited with.
DEFAULT_BOT_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    use_application_commands=True,
).value

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15


def permission_value(permissions: int | discord.Permissions) -> int:
    return permissions.value if isinstance(permissions, discord.Permissions) else int(permissions)


@dataclass(frozen=True)
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False


@dataclass(frozen=True)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0


@dataclass(frozen=True)
class FakeChannel:
    id: int
    name: str
    type: int = 0  # 0 text, 1 DM, 2 voice, 4 category, 11 public thread
    guild_id: int | None = None
    position: int = 0
    parent_id: int | None = None
    recipient_id: int | None = None  # DMs only
    owner_id: int | None = None  # threads only: who started it


@dataclass(frozen=True)
class FakeMember:
    user: FakeUser
    guild_id: int
    role_ids: tuple[int, ...] = ()
    joined_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    )
    nick: str | None = None

    @property
    def id(self) -> int:
        return self.user.id


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request, as the bot sent it."""

    form_field: str  # "files[0]"
    filename: str
    data: bytes = field(repr=False)
    content_type: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class FakeAttachment:
    """A file Discord holds: uploaded by the bot, or registered by a test as a user's upload."""

    id: int
    channel_id: int
    filename: str
    data: bytes = field(repr=False)
    content_type: str
    url: str
    proxy_url: str
    expires_at: float  # fake-clock time after which the signed URL answers 404
    width: int | None = None
    height: int | None = None
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class FakeMessage:
    """A message as Discord stores it now; edits replace the snapshot, deletes mark it."""

    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    created_at: datetime.datetime
    content: str = ""
    embeds: tuple[dict[str, Any], ...] = ()
    components: tuple[dict[str, Any], ...] = ()
    attachments: tuple[FakeAttachment, ...] = ()
    flags: int = 0
    type: int = 0
    edited_at: datetime.datetime | None = None
    edits: int = 0
    webhook_id: int | None = None
    interaction_id: int | None = None
    reference_id: int | None = None
    # A forward: the forwarded message as it was (Discord's `message_snapshots`), its reference
    # then of type 1 (forward), not a reply.
    snapshots: tuple[dict[str, Any], ...] = ()
    nonce: str | None = None
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Still the "Bot is thinking..." placeholder of a deferred answer."""
        return bool(self.flags & FLAG_LOADING)

    def iter_components(self) -> Iterator[dict[str, Any]]:
        """Every component, however deeply nested (action rows, containers, sections)."""

        def walk(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for item in items:
                yield item
                yield from walk(item.get("components", []))
                if isinstance(item.get("accessory"), dict):
                    yield from walk([item["accessory"]])

        return walk(self.components)

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.iter_components() if "custom_id" in c]

    def component(self, custom_id: str) -> dict[str, Any] | None:
        return next((c for c in self.iter_components() if c.get("custom_id") == custom_id), None)


class FakeGuild:
    """A guild's roles, channels and members; ids come from the server's snowflakes."""

    def __init__(
        self,
        *,
        id: int,
        name: str,
        owner_id: int,
        premium_tier: int,
        new_id: Callable[[], int],
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
    ) -> None:
        self.id = id
        self.name = name
        self.owner_id = owner_id
        self.premium_tier = premium_tier
        self._new_id = new_id
        # @everyone's id is the guild's id, as on Discord.
        self.roles: dict[int, FakeRole] = {
            id: FakeRole(id=id, guild_id=id, name="@everyone", permissions=everyone_permissions)
        }
        self.channels: dict[int, FakeChannel] = {}
        self.members: dict[int, FakeMember] = {}

    @property
    def everyone(self) -> FakeRole:
        return self.roles[self.id]

    @property
    def upload_limit(self) -> int:
        return UPLOAD_LIMIT_BY_TIER.get(self.premium_tier, 10 * MiB)

    def add_role(self, name: str, permissions: int | discord.Permissions = 0) -> FakeRole:
        role = FakeRole(
            id=self._new_id(),
            guild_id=self.id,
            name=name,
            permissions=permission_value(permissions),
            position=len(self.roles),
        )
        self.roles[role.id] = role
        return role

    def add_channel(
        self,
        name: str,
        *,
        type: int = 0,
        parent_id: int | None = None,
        owner_id: int | None = None,
    ) -> FakeChannel:
        channel = FakeChannel(
            id=self._new_id(),
            name=name,
            type=type,
            guild_id=self.id,
            position=len(self.channels),
            parent_id=parent_id,
            owner_id=owner_id,
        )
        self.channels[channel.id] = channel
        return channel

    def add_member(
        self, user: FakeUser, roles: Iterable[FakeRole | int] = (), nick: str | None = None
    ) -> FakeMember:
        role_ids = tuple(r.id if isinstance(r, FakeRole) else int(r) for r in roles)
        unknown = [r for r in role_ids if r not in self.roles]
        if unknown:
            raise ValueError(f"roles {unknown} are not in guild {self.name!r}")
        member = FakeMember(user=user, guild_id=self.id, role_ids=role_ids, nick=nick)
        self.members[user.id] = member
        return member

    def permissions_of(self, user_id: int, role_ids: Iterable[int] | None = None) -> int:
        """Guild-level permissions (channel overwrites are not modelled)."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        if role_ids is None:
            member = self.members.get(user_id)
            role_ids = member.role_ids if member else ()
        value = self.everyone.permissions
        for role_id in role_ids:
            role = self.roles.get(role_id)
            if role is not None:
                value |= role.permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

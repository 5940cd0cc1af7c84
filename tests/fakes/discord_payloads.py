"""JSON payloads built from the fake's models, with the fields discord.py 2.7 reads.

Field lists follow discord.py's parsers (`Member.__init__` needs `flags`, `Guild` needs
`member_count` to count as chunked, `Attachment` needs `proxy_url`...).
"""

from __future__ import annotations

from typing import Any

from tests.fakes.discord_models import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
)
from tests.fakes.discord_time import iso


def user_payload(user: FakeUser) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "username": user.username,
        "global_name": user.global_name,
        "discriminator": "0",
        "avatar": None,
        "bot": user.bot,
        "public_flags": 0,
    }


def role_payload(role: FakeRole) -> dict[str, Any]:
    return {
        "id": str(role.id),
        "name": role.name,
        "permissions": str(role.permissions),
        "position": role.position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


# Announcement, public and private threads.
THREAD_TYPES = frozenset({10, 11, 12})


def channel_payload(channel: FakeChannel, recipient: FakeUser | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": str(channel.id), "type": channel.type, "name": channel.name}
    if channel.guild_id is not None:
        payload.update(
            guild_id=str(channel.guild_id),
            position=channel.position,
            parent_id=str(channel.parent_id) if channel.parent_id else None,
            permission_overwrites=[],
            nsfw=False,
            topic=None,
            rate_limit_per_user=0,
            last_message_id=None,
        )
        if channel.type == 2:  # voice
            payload.update(bitrate=64000, user_limit=0, rtc_region=None)
        if channel.type in THREAD_TYPES:
            payload.update(
                owner_id=str(channel.owner_id or 0),
                message_count=0,
                member_count=1,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": "2024-01-01T00:00:00+00:00",
                    "locked": False,
                },
            )
            del payload["permission_overwrites"], payload["position"], payload["topic"]
    if recipient is not None:
        payload["recipients"] = [user_payload(recipient)]
    return payload


def member_payload(
    member: FakeMember, *, permissions: int | None = None, with_user: bool = True
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "roles": [str(r) for r in member.role_ids],
        "joined_at": iso(member.joined_at),
        "nick": member.nick,
        "avatar": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "premium_since": None,
        "communication_disabled_until": None,
    }
    if with_user:
        payload["user"] = user_payload(member.user)
    if permissions is not None:
        # Interactions carry the member's resolved permissions as a decimal string.
        payload["permissions"] = str(permissions)
    return payload


def guild_create_payload(guild: FakeGuild, joined_at: str) -> dict[str, Any]:
    return {
        "id": str(guild.id),
        "name": guild.name,
        "owner_id": str(guild.owner_id),
        "premium_tier": guild.premium_tier,
        "premium_subscription_count": 0,
        "icon": None,
        "splash": None,
        "banner": None,
        "description": None,
        "features": [],
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "afk_timeout": 300,
        "system_channel_flags": 0,
        "preferred_locale": "en-US",
        "roles": [role_payload(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "channels": [
            channel_payload(c) for c in guild.channels.values() if c.type not in THREAD_TYPES
        ],
        # Active threads, as Discord lists them in GUILD_CREATE.
        "threads": [channel_payload(c) for c in guild.channels.values() if c.type in THREAD_TYPES],
        "members": [member_payload(m) for m in guild.members.values()],
        # member_count == len(members) marks the guild as chunked: no member requests needed.
        "member_count": len(guild.members),
        "large": False,
        "unavailable": False,
        "joined_at": joined_at,
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def attachment_payload(attachment: FakeAttachment) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(attachment.id),
        "filename": attachment.filename,
        "size": attachment.size,
        "url": attachment.url,
        "proxy_url": attachment.proxy_url,
        "content_type": attachment.content_type,
        "flags": 0,
    }
    if attachment.width is not None:
        payload.update(width=attachment.width, height=attachment.height)
    if attachment.description is not None:
        payload["description"] = attachment.description
    if attachment.ephemeral:
        payload["ephemeral"] = True
    return payload


def message_payload(
    message: FakeMessage,
    author: FakeUser,
    *,
    application_id: int,
    interaction_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(message.id),
        "channel_id": str(message.channel_id),
        "type": message.type,
        "content": message.content,
        "author": user_payload(author),
        "timestamp": iso(message.created_at),
        "edited_timestamp": iso(message.edited_at) if message.edited_at else None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [attachment_payload(a) for a in message.attachments],
        "embeds": list(message.embeds),
        "components": list(message.components),
        "pinned": False,
        "flags": message.flags,
    }
    if message.guild_id is not None:
        payload["guild_id"] = str(message.guild_id)
    if message.nonce is not None:
        payload["nonce"] = message.nonce
    if message.webhook_id is not None:
        payload["webhook_id"] = str(message.webhook_id)
        payload["application_id"] = str(application_id)
    if message.reference_id is not None:
        payload["message_reference"] = {
            "type": 1 if message.snapshots else 0,
            "message_id": str(message.reference_id),
            "channel_id": str(message.channel_id),
        }
        if message.guild_id is not None:
            payload["message_reference"]["guild_id"] = str(message.guild_id)
    if message.snapshots:
        payload["message_snapshots"] = [{"message": snapshot} for snapshot in message.snapshots]
    if interaction_metadata is not None:
        payload["interaction_metadata"] = interaction_metadata
    return payload


def application_payload(application_id: int, name: str, owner: FakeUser) -> dict[str, Any]:
    return {
        "id": str(application_id),
        "name": name,
        "description": "",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": user_payload(owner),
        "verify_key": "0" * 64,
        "team": None,
        "flags": 0,
        "summary": "",
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "approximate_guild_count": 1,
    }

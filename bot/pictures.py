"""Finding the picture in a message a member picked Apps → Animate on.

A member sees a picture in three ways: a file they attached, a file in a message they forwarded
(Discord keeps it in the forward's snapshot, not its attachments), or a link Discord unfurled
into an image. Each is read through Discord's CDN or media proxy, so the bot never fetches an
address a member typed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import discord

_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".heic", ".heif", ".avif")


class Picture(Protocol):
    """What /animate needs of a picture: what Discord says of it, and its bytes."""

    @property
    def size(self) -> int: ...  # 0 when Discord does not say

    @property
    def content_type(self) -> str | None: ...

    async def read(self) -> bytes: ...


@dataclass(frozen=True)
class LinkedPicture:
    """A picture a member linked, as Discord's unfurled `image` embed shows it. Read from the
    embed's proxy address (Discord's copy), never from the link itself: the bot must not be
    made to fetch any address a member types."""

    proxy_url: str
    http: discord.http.HTTPClient
    # Discord gives no size for a linked file; the service checks the bytes it reads.
    size: int = 0
    content_type: str | None = None

    async def read(self) -> bytes:
        return await self.http.get_from_cdn(self.proxy_url)


def first_picture(attachments: Iterable[discord.Attachment]) -> discord.Attachment | None:
    """The first attachment that is a picture (by Discord's content type, else its name)."""
    for attachment in attachments:
        kind = (attachment.content_type or "").split(";")[0].strip().lower()
        if kind.startswith("image/") or (
            not kind and attachment.filename.lower().endswith(_PICTURE_SUFFIXES)
        ):
            return attachment
    return None


def _linked_picture(
    embeds: Iterable[discord.Embed], http: discord.http.HTTPClient
) -> LinkedPicture | None:
    for embed in embeds:
        # Only a link to a picture: an article's preview image is not what the member posted,
        # and a `gifv` (Tenor, Giphy) is an animation whose thumbnail is a single frame of it.
        if embed.type != "image":
            continue
        proxy_url = embed.thumbnail.proxy_url or embed.image.proxy_url
        if proxy_url:
            return LinkedPicture(proxy_url=proxy_url, http=http)
    return None


def message_picture(message: discord.Message, http: discord.http.HTTPClient) -> Picture | None:
    """The message's first picture: attached, then forwarded, then linked."""
    forwarded = [snapshot.attachments for snapshot in message.message_snapshots]
    attached = first_picture(
        [*message.attachments, *(item for group in forwarded for item in group)]
    )
    if attached is not None:
        return attached
    embeds = [*message.embeds, *(e for s in message.message_snapshots for e in s.embeds)]
    return _linked_picture(embeds, http)

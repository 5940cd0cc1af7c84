"""Finding the picture in a message a member picked Apps → Animate on.

A member sees a picture in three ways: a file they attached, a file in a message they forwarded
(Discord keeps it in the forward's snapshot, not its attachments), or a link Discord unfurled
into an image. Each is read through Discord's CDN or media proxy, so the bot never fetches an
address a member typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiohttp
import discord

from generation.errors import InvalidImage

_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".heic", ".heif", ".avif")


class Picture(Protocol):
    """What /animate needs of a picture: what Discord says of it, and its bytes."""

    @property
    def size(self) -> int: ...  # 0 when Discord does not say

    @property
    def content_type(self) -> str | None: ...

    @property
    def filename(self) -> str: ...

    def is_spoiler(self) -> bool: ...

    async def read(self) -> bytes: ...


@dataclass(frozen=True)
class LinkedPicture:
    """A picture a member linked, as Discord's unfurled `image` embed shows it. Read from the
    embed's proxy address (Discord's copy), never from the link itself: the bot must not be
    made to fetch any address a member types."""

    proxy_url: str
    filename: str  # the link's last part, to name it in a choice
    http: discord.http.HTTPClient  # for discord.py's proxy settings
    # Discord gives no size for a linked file: the download stops past this many bytes.
    max_bytes: int
    # The link was posted inside ||spoiler bars||.
    spoiler: bool = False
    size: int = 0
    content_type: str | None = None

    def is_spoiler(self) -> bool:
        return self.spoiler

    async def read(self) -> bytes:
        """The bytes, or `InvalidImage` as soon as there are more than `max_bytes` of them."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                self.proxy_url, proxy=self.http.proxy, proxy_auth=self.http.proxy_auth
            ) as response,
        ):
            if response.status != 200:
                raise discord.HTTPException(response, "the linked picture could not be read")
            if (response.content_length or 0) > self.max_bytes:
                raise self._too_large()
            data = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > self.max_bytes:
                    raise self._too_large()
            return bytes(data)

    def _too_large(self) -> InvalidImage:
        return InvalidImage(
            f"That picture is over {mib(self.max_bytes)} MiB, the most I accept. Please send a "
            "smaller one (a JPEG is usually much smaller than a PNG)."
        )


def mib(size: int) -> str:
    """A size limit in MiB as a member reads it: whole, unless it is under one."""
    value = size / 2**20
    return f"{value:.0f}" if value >= 1 else f"{value:.2f}"


@dataclass(frozen=True)
class FoundPicture:
    picture: Picture
    source: str  # how the message holds it: "attached", "forwarded", "linked"...


def is_picture(attachment: discord.Attachment) -> bool:
    """By Discord's content type, else by its name."""
    kind = (attachment.content_type or "").split(";")[0].strip().lower()
    return kind.startswith("image/") or (
        not kind and attachment.filename.lower().endswith(_PICTURE_SUFFIXES)
    )


_SPOILER = re.compile(r"\|\|(.+?)\|\|", re.DOTALL)


def _comparable(url: str) -> str:
    return unquote(url).split("://", 1)[-1].rstrip("/").lower()


def _spoilered(url: str, content: str) -> bool:
    """Whether the link was posted inside ||spoiler bars||. Discord's embed URL is not always the
    text the member typed (percent-encoded, rewritten hosts), so when in doubt it is: a link in
    bars and this one nowhere outside them."""
    hidden = _SPOILER.findall(content)
    if not any("://" in part for part in hidden):
        return False
    outside = unquote(_SPOILER.sub(" ", content)).lower()
    return not url or _comparable(url) not in outside


def _linked(
    embed: discord.Embed, content: str, http: discord.http.HTTPClient, max_bytes: int
) -> FoundPicture | None:
    # Only a link to a picture, or to a GIF (Tenor, Giphy: a `gifv`, whose thumbnail is its
    # first frame, as an attached GIF's first frame is what gets animated). An article's
    # preview image is the site's, not what the member posted.
    if embed.type not in ("image", "gifv"):
        return None
    proxy_url = embed.thumbnail.proxy_url or embed.image.proxy_url
    if not proxy_url:
        return None
    name = urlsplit(embed.url or proxy_url).path.rstrip("/").rsplit("/", 1)[-1]
    spoiler = _spoilered(embed.url or "", content)
    picture = LinkedPicture(
        proxy_url=proxy_url,
        filename=unquote(name) or "picture",
        http=http,
        max_bytes=max_bytes,
        spoiler=spoiler,
    )
    return FoundPicture(
        picture, "linked GIF, its first frame" if embed.type == "gifv" else "linked"
    )


def message_pictures(
    message: discord.Message, http: discord.http.HTTPClient, *, max_bytes: int
) -> list[FoundPicture]:
    """The message's pictures in the order a member sees them: attached, forwarded, linked
    (whose download stops past `max_bytes`)."""
    snapshots = message.message_snapshots
    found = [FoundPicture(a, "attached") for a in message.attachments if is_picture(a)]
    for snapshot in snapshots:
        found += [FoundPicture(a, "forwarded") for a in snapshot.attachments if is_picture(a)]
    linked_in = [(e, message.content) for e in message.embeds]
    linked_in += [(e, s.content) for s in snapshots for e in s.embeds]
    for embed, content in linked_in:
        linked = _linked(embed, content, http, max_bytes)
        if linked is not None:
            found.append(linked)
    return found

"""Which picture Apps → Animate takes from a message: attached, forwarded, then linked."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import discord

from bot.pictures import LinkedPicture, first_picture, message_picture

HTTP: Any = object()  # only kept by a LinkedPicture, never called here


def attached(filename: str, content_type: str | None) -> Any:
    return SimpleNamespace(filename=filename, content_type=content_type)


def message(
    attachments: Sequence[Any] = (), embeds: Sequence[dict[str, Any]] = (), **more: Any
) -> Any:
    return SimpleNamespace(
        attachments=list(attachments),
        embeds=[discord.Embed.from_dict(e) for e in embeds],
        message_snapshots=more.get("snapshots", []),
    )


def linked(kind: str, proxy_url: str = "https://images-ext-1.discordapp.net/x.png") -> dict:
    return {
        "type": kind,
        "url": "https://example.com/cat.png",
        "thumbnail": {"url": "https://example.com/cat.png", "proxy_url": proxy_url},
    }


def test_the_first_picture_is_found_by_type_or_else_by_name() -> None:
    notes, photo, drawing = (
        attached("notes.txt", "text/plain; charset=utf-8"),
        attached("photo.JPG", None),  # no type given: its name says
        attached("drawing.webp", "image/webp"),
    )
    assert first_picture([notes, photo, drawing]) is photo
    assert first_picture([notes, drawing]) is drawing
    assert first_picture([notes, attached("song.mp3", None)]) is None


def test_an_attached_picture_comes_before_a_forwarded_one_and_a_link() -> None:
    own, forwarded = attached("own.png", "image/png"), attached("fwd.png", "image/png")
    snapshot = SimpleNamespace(attachments=[forwarded], embeds=[])
    picked = message(
        [attached("a.txt", "text/plain"), own], [linked("image")], snapshots=[snapshot]
    )
    assert message_picture(picked, HTTP) is own


def test_a_forwarded_messages_picture_is_found_in_its_snapshot() -> None:
    forwarded = attached("fwd.png", "image/png")
    snapshot = SimpleNamespace(attachments=[forwarded], embeds=[])
    assert message_picture(message(snapshots=[snapshot]), HTTP) is forwarded


def test_a_linked_picture_is_read_from_discords_proxy_never_the_link() -> None:
    proxy = "https://images-ext-1.discordapp.net/external/abc/https/example.com/cat.png"
    picture = message_picture(message(embeds=[linked("image", proxy)]), HTTP)
    assert isinstance(picture, LinkedPicture)
    assert picture.proxy_url == proxy and picture.size == 0
    # In a forward too.
    snapshot = SimpleNamespace(attachments=[], embeds=[discord.Embed.from_dict(linked("image"))])
    assert isinstance(message_picture(message(snapshots=[snapshot]), HTTP), LinkedPicture)


def test_an_article_preview_or_an_animation_link_is_not_a_picture() -> None:
    # A news link's preview image is the site's; a Tenor `gifv`'s thumbnail is one frame of it.
    assert message_picture(message(embeds=[linked("article"), linked("gifv")]), HTTP) is None
    assert message_picture(message(embeds=[linked("image", "")]), HTTP) is None
    assert message_picture(message([attached("a.txt", "text/plain")]), HTTP) is None

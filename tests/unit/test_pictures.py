"""Which picture Apps → Animate takes from a message: attached, forwarded, then linked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.pictures import FoundPicture, LinkedPicture, is_picture, message_pictures
from bot.views import PICK_EXPIRED, PICKED_ALREADY, PicturePicker

HTTP: Any = object()  # only kept by a LinkedPicture, never called here


def attached(filename: str, content_type: str | None) -> Any:
    return SimpleNamespace(filename=filename, content_type=content_type)


def message(
    attachments: Sequence[Any] = (), embeds: Sequence[dict[str, Any]] = (), **more: Any
) -> Any:
    return SimpleNamespace(
        content=more.get("content", ""),
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


def pictures(message: Any) -> list[tuple[Any, str]]:
    return [
        (found.picture, found.source)
        for found in message_pictures(message, HTTP, max_bytes=1 << 20)
    ]


def test_a_picture_is_known_by_its_type_or_else_by_its_name() -> None:
    assert is_picture(attached("photo.JPG", None))  # no type given: its name says
    assert is_picture(attached("drawing", "image/webp"))
    assert not is_picture(attached("notes.txt", "text/plain; charset=utf-8"))
    assert not is_picture(attached("song.mp3", None))


def test_pictures_come_attached_then_forwarded_then_linked() -> None:
    own, forwarded = attached("own.png", "image/png"), attached("fwd.png", "image/png")
    snapshot = SimpleNamespace(content="", attachments=[forwarded], embeds=[])
    found = pictures(
        message([attached("a.txt", "text/plain"), own], [linked("image")], snapshots=[snapshot])
    )
    assert [(p.filename, source) for p, source in found] == [
        ("own.png", "attached"),
        ("fwd.png", "forwarded"),
        ("cat.png", "linked"),
    ]
    assert found[0][0] is own and found[1][0] is forwarded


def test_a_linked_picture_is_read_from_discords_proxy_never_the_link() -> None:
    proxy = "https://images-ext-1.discordapp.net/external/abc/https/example.com/cat.png"
    ((picture, _),) = pictures(message(embeds=[linked("image", proxy)]))
    assert isinstance(picture, LinkedPicture)
    assert picture.proxy_url == proxy and picture.size == 0 and picture.filename == "cat.png"
    # In a forward too.
    snapshot = SimpleNamespace(
        content="", attachments=[], embeds=[discord.Embed.from_dict(linked("image"))]
    )
    assert [source for _, source in pictures(message(snapshots=[snapshot]))] == ["linked"]


def test_a_linked_gif_gives_its_first_frame_and_says_so() -> None:
    # A Tenor link unfurls as a `gifv` whose thumbnail is its first frame: as for an attached
    # GIF, the first frame is what gets animated.
    ((picture, source),) = pictures(message(embeds=[linked("gifv")]))
    assert isinstance(picture, LinkedPicture) and source == "linked GIF, its first frame"


def test_a_link_inside_spoiler_bars_is_a_spoiler() -> None:
    url = "https://example.com/cat.png"
    for content, spoiler in [
        (f"look ||{url}||", True),
        (f"||this one: {url} ||", True),
        (f"{url} ||and a secret||", False),
        (url, False),
        # Discord's embed URL is not always what was typed (here: percent-encoded, a host
        # rewritten): a link in bars that is nowhere outside them is taken as this one.
        ("||https://example.com/caf%C3%A9.png||", True),
        ("||https://x.example/cat.png||", True),
        ("||https://elsewhere.example/a.png|| https://example.com/cat.png", False),
    ]:
        ((picture, _),) = pictures(message(embeds=[linked("image")], content=content))
        assert picture.is_spoiler() is spoiler, content


def test_an_article_preview_is_not_a_picture() -> None:
    # A news link's preview image is the site's, not what the member posted.
    assert pictures(message(embeds=[linked("article"), linked("link")])) == []
    assert pictures(message(embeds=[linked("image", "")])) == []
    assert pictures(message([attached("a.txt", "text/plain")])) == []


class Asked:
    """The Apps → Animate interaction the menu answered: records what its message became."""

    def __init__(self) -> None:
        self.edits: list[dict[str, Any]] = []

    async def edit_original_response(self, **fields: Any) -> None:
        self.edits.append(fields)


class Late:
    """A pick's interaction: records its answer."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.response = self

    async def send_message(self, content: str, **fields: Any) -> None:
        self.said.append(content)


def found(count: int) -> list[FoundPicture]:
    return [FoundPicture(attached(f"p{i}.png", "image/png"), "attached") for i in range(count)]


async def test_the_menu_offers_discords_most_and_one_pick_makes_one_clip() -> None:
    picked: list[str] = []

    async def on_pick(interaction: Any, picture: Any) -> None:
        picked.append(picture.filename)

    asked = Asked()
    picker = PicturePicker(found(30), on_pick, asked=asked, menus={})  # type: ignore[arg-type]
    (select,) = picker.children
    assert isinstance(select, discord.ui.Select) and len(select.options) == 25
    assert picker.text.startswith("That message has 30 pictures") and "first 25" in picker.text
    select._values = ["3"]  # what discord.py sets from the interaction's data
    await select.callback(object())  # type: ignore[arg-type]
    # A second pick raced the first: told so, and no second clip.
    late = Late()
    await select.callback(late)  # type: ignore[arg-type]
    assert picked == ["p3.png"] and late.said == [PICKED_ALREADY]
    assert asked.edits == [{"content": "Picked **p3.png**.", "view": None}]


async def test_an_expired_menu_says_to_use_animate_again() -> None:
    async def on_pick(interaction: Any, picture: Any) -> None:
        raise AssertionError("no pick")

    asked = Asked()
    picker = PicturePicker(found(2), on_pick, asked=asked, menus={})  # type: ignore[arg-type]
    await picker.on_timeout()
    assert asked.edits == [{"content": PICK_EXPIRED, "view": None}]


async def test_a_linked_pictures_download_stops_past_the_limit() -> None:
    # Discord gives no size for a linked file: a huge one must not be read whole into memory.
    import socket

    from aiohttp import web

    from generation.errors import InvalidImage

    async def handler(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        if request.query.get("length"):
            response.content_length = size
        await response.prepare(request)
        sent = 0
        while sent < size or size == 0:  # 0: a stream with no end
            await response.write(b"x" * 1000)
            sent += 1000
        return response

    app = web.Application()
    app.router.add_get("/{size}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    http: Any = SimpleNamespace(proxy=None, proxy_auth=None)
    try:

        def linked(path: str) -> LinkedPicture:
            url = f"http://127.0.0.1:{port}/{path}"
            return LinkedPicture(proxy_url=url, filename="x.png", http=http, max_bytes=10_000)

        assert await linked("10000").read() == b"x" * 10_000
        with pytest.raises(InvalidImage) as info:
            # No length given, and no end: only stopping past the limit returns at all.
            await asyncio.wait_for(linked("0").read(), 10)
        assert "over 0.01 MiB" in info.value.user_message and "smaller" in info.value.user_message
        with pytest.raises(InvalidImage):
            await linked("5000000?length=1").read()  # refused from its length alone
    finally:
        await runner.cleanup()


def test_each_menu_is_known_by_a_token_and_old_ones_are_forgotten() -> None:
    import time

    from bot.views import PICK_ID, PICK_TOKENS_KEPT_SECONDS, MenuState

    async def on_pick(interaction: Any, picture: Any) -> None:
        raise AssertionError("no pick")

    menus = {"0" * 16: MenuState(time.monotonic() - PICK_TOKENS_KEPT_SECONDS - 1)}
    picker = PicturePicker(found(2), on_pick, asked=Asked(), menus=menus)  # type: ignore[arg-type]
    (select,) = picker.children
    assert isinstance(select, discord.ui.Select) and select.custom_id.startswith(PICK_ID)
    assert list(menus) == [select.custom_id.removeprefix(PICK_ID)]

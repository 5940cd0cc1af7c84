"""The whole bot, end to end: the real discord.py client against the fake Discord server, the real
engine on the tiny SVD model, the real SQLite database. Each test does what a member or a
moderator would do and checks what they would see."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import discord
import numpy as np
import pytest
from PIL import Image

from bot import presenter as presenter_module
from bot.app import App, build_app
from bot.settings import Settings
from generation.errors import DiskFull, GenerationFailed
from generation.fake_engine import FakeEngine
from generation.reencode import read_frames
from generation.results import Engine
from storage.member_defaults import MemberDefaultsStore
from tests.fakes.discord_models import FakeMessage
from tests.fakes.discord_server import FakeDiscordServer

# Generating on a CPU takes seconds; messages arrive after it.
CLIP_TIMEOUT = 90.0
TINY_FRAMES = 4
MANAGE_GUILD = discord.Permissions(manage_guild=True).value
MEMBER = discord.Permissions(send_messages=True, attach_files=True).value


def picture(width: int = 320, height: int = 200, *, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def settings_for(server: FakeDiscordServer, model: Path, data: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "discord_token": server.bot_token,
        "discord_api_url": server.api_url,
        "discord_gateway_url": server.gateway_url,
        "svd_model": str(model),
        "resolution": 256,
        "device": "cpu",
        "database_path": data / "bot.sqlite3",
        "data_dir": data,
        "default_quota": 3,
        # Whatever the CI machine's disk holds: the disk floor has a test of its own.
        "min_free_disk_mb": 0,
        "_env_file": None,
    }
    values.update(extra)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    engine: Engine | None = None,
    *,
    guild_ready_timeout: float = 0.1,
    until_ready: bool = True,
) -> AsyncIterator[App]:
    """The bot, connected; `until_ready=False` yields once it has started connecting."""
    async with build_app(
        settings,
        engine=engine,
        edit_interval=0.05,
        guild_ready_timeout=guild_ready_timeout,
        presence_interval=0.1,
    ) as app:
        await app.queue.start()
        token = settings.discord_token.get_secret_value() if settings.discord_token else ""
        task = asyncio.create_task(app.bot.start(token))
        try:
            if until_ready:
                await asyncio.wait_for(app.bot.wait_until_ready(), 30)
                await asyncio.wait_for(app.queue.ready.wait(), 60)
                await app.bot.tree.sync()
            yield app
        finally:
            await app.queue.stop(5)
            await app.bot.drain()
            await app.service.close()
            await app.bot.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def bot(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> AsyncIterator[App]:
    async with running(settings_for(fake_discord, tiny_model_dir, data_dir)) as app:
        yield app


async def animate(server: FakeDiscordServer, user: Any = None, **options: Any) -> Any:
    # Few steps keep the tiny model quick on a CPU; tests that need a long job ask for more.
    options.setdefault("steps", 3)
    return await server.interaction(
        "animate",
        options,
        user=user,
        attachment=options.pop("attachment", ("cat.png", picture(), "image/png")),
        permissions=MEMBER,
    )


async def status_shown(server: FakeDiscordServer, words: str) -> None:
    """Wait for the bot to set a custom status (gateway op 3) that says `words`."""

    def says(frame: Any) -> bool:
        if frame.op != 3:
            return False
        (activity,) = frame.data["activities"]
        assert activity["type"] == 4 and len(activity["state"]) <= 128, activity
        return words in activity["state"]

    await server.recorder.wait_for_frame(says, 30, f"a status saying {words!r}")


async def clip_message(server: FakeDiscordServer, user_id: int | None = None) -> FakeMessage:
    """The next message in the channel that carries a clip."""

    def has_clip(message: FakeMessage) -> bool:
        return bool(message.attachments) and (user_id is None or f"<@{user_id}>" in message.content)

    return await wait_for_message(server, has_clip, CLIP_TIMEOUT)


async def wait_for_message(
    server: FakeDiscordServer, predicate: Callable[[FakeMessage], bool], within: float
) -> FakeMessage:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        for message in server.messages(server.channel):
            if not message.deleted and predicate(message):
                return message
        await asyncio.sleep(0.05)
    contents = [m.content[:80] for m in server.messages(server.channel)]
    raise AssertionError(f"no such message within {within} s; channel has {contents}")


def frames_of(message: FakeMessage, tmp_path: Path) -> np.ndarray:
    attachment = message.attachments[0]
    path = tmp_path / attachment.filename
    path.write_bytes(attachment.data)
    return read_frames(path)[0]


async def reply_text(handle: Any, within: float = 10.0) -> str:
    """The ephemeral answer the member sees (immediate or the edited deferral)."""
    message = await handle.wait_original(lambda m: bool(m.content), timeout=within)
    return str(message.content)


async def test_animate_posts_a_clip_with_the_frames_asked_for(
    bot: App, fake_discord: FakeDiscordServer, tmp_path: Path
) -> None:
    # The bot's status line tells members how busy it is before they ask.
    await status_shown(fake_discord, "Ready: /animate a picture")
    handle = await animate(fake_discord, motion=200, seed=42)
    await status_shown(fake_discord, "Making a clip")
    await handle.wait_response()
    assert handle.deferred and handle.ephemeral
    accepted = await reply_text(handle)
    assert "Got it" in accepted and "2 of 3" in accepted

    message = await clip_message(fake_discord, fake_discord.user.id)
    frames = frames_of(message, tmp_path)
    assert frames.shape[0] == TINY_FRAMES
    assert frames.shape[1:3] == (144, 256)
    assert "seed `42`" in message.content and "motion `200`" in message.content
    assert {"svd:reroll", "svd:more", "svd:less", "svd:delete"} <= {
        cid.rsplit(":", 1)[0] for cid in message.custom_ids
    }

    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**2** of 3" in await reply_text(quota)

    # A new session (Discord forgot the old one) starts with the status already set.
    fake_discord.gateway.invalidate_sessions()
    await fake_discord.drop_gateway()

    def identifies_with_status(frame: Any) -> bool:
        # discord.py sends the status it logs in with as the identify's (legacy) "game".
        presence = frame.data.get("presence") if frame.op == 2 else None
        return bool(presence) and "🎬" in (presence.get("game") or {}).get("state", "")

    await fake_discord.recorder.wait_for_frame(identifies_with_status, 15, "a new IDENTIFY")


async def test_apps_animate_on_a_members_own_picture_makes_the_clip(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    # The default settings, within the server's step cap (kept small for the CPU).
    settings = settings_for(fake_discord, tiny_model_dir, data_dir, default_max_steps=3)
    async with running(settings):
        await _apps_animate(fake_discord, tmp_path)


async def _apps_animate(fake_discord: FakeDiscordServer, tmp_path: Path) -> None:
    posted = fake_discord.post("look!", attachments=[("cat.png", picture(), "image/png")])
    handle = await fake_discord.message_command("Animate", posted)
    accepted = await reply_text(handle)
    assert handle.ephemeral and "Got it" in accepted and "2 of 3" in accepted
    clip = await clip_message(fake_discord, fake_discord.user.id)
    assert frames_of(clip, tmp_path).shape[0] == TINY_FRAMES
    assert "steps `3`" in clip.content
    # Alt text for screen readers.
    alt = clip.attachments[0].description or ""
    assert alt.startswith("Video: a short clip animated") and "motion 127 of 255" in alt
    # Someone else's picture is theirs to animate; a message without one says what to do.
    # Neither costs a clip.
    other = fake_discord.add_user("other")
    refused = await fake_discord.message_command("Animate", posted, user=other)
    assert "works on your own messages" in await reply_text(refused) and refused.ephemeral
    words = fake_discord.post("no picture here", attachments=[("a.txt", b"hi", "text/plain")])
    empty = await fake_discord.message_command("Animate", words)
    assert "has no picture" in await reply_text(empty)
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**2** of 3" in await reply_text(quota)

    # A picture the member forwarded is in the forward's snapshot, not its attachments; and
    # Apps → Animate, which has no options, uses the member's own defaults.
    saved = await fake_discord.interaction(
        "defaults", {"format": "gif", "quality": "draft", "bounce": True}, permissions=MEMBER
    )
    text = await reply_text(saved)
    assert "format `gif` (yours)" in text and "`bounce` (yours)" in text
    theirs = fake_discord.post(attachments=[("dog.png", picture(seed=5), "image/png")], user=other)
    handle = await fake_discord.message_command("Animate", fake_discord.forward(theirs))
    assert "Got it" in await reply_text(handle)
    as_set = await wait_for_message(
        fake_discord,
        lambda m: (
            m.author_id == fake_discord.bot_user.id and bool(m.attachments) and m.id != clip.id
        ),
        CLIP_TIMEOUT,
    )
    assert as_set.attachments[0].filename.endswith(".gif")
    assert "quality `draft`" in as_set.content and "`bounce`" in as_set.content
    # Forwards, then backwards without repeating the turning frames.
    bounced = frames_of(as_set, tmp_path)
    assert bounced.shape[0] == 2 * TINY_FRAMES - 2
    assert np.array_equal(bounced[TINY_FRAMES - 2], bounced[TINY_FRAMES])
    # One default forgotten, the others kept; then all of them.
    forgot = await fake_discord.interaction("defaults", {"forget": "bounce"}, permissions=MEMBER)
    text = await reply_text(forgot)
    assert "format `gif` (yours)" in text and "bounce" not in text
    reset = await fake_discord.interaction("defaults", {"reset": True}, permissions=MEMBER)
    assert "Saved" in await reply_text(reset)
    again = await fake_discord.interaction("defaults", {"forget": "fps"}, permissions=MEMBER)
    assert "Saved" not in await reply_text(again)  # there was nothing to forget
    # Several pictures: the member picks one (here the linked one, which is read from Discord's
    # copy on its media proxy: the link's own host does not exist).
    album = fake_discord.post(
        "two and a link",
        attachments=[("a.png", picture(), "image/png"), ("b.webp", picture(), "image/webp")],
        linked_picture=("owl.png", picture(seed=6), "image/png"),
        spoiler_link=True,
    )
    asked = await fake_discord.message_command("Animate", album)
    assert "3 pictures" in await reply_text(asked) and asked.ephemeral
    menu = asked.original
    assert menu is not None
    (select,) = [c for c in menu.iter_components() if c["type"] == 3]
    labels = [(o["label"], o.get("description")) for o in select["options"]]
    assert labels == [("1. a.png", "attached"), ("2. b.webp", "attached"), ("3. owl.png", "linked")]
    pick = await fake_discord.click(menu, select["custom_id"], values=["2"])
    assert "Got it" in await reply_text(pick) and pick.ephemeral
    closed = await wait_for_message(fake_discord, lambda m: m.id == menu.id and m.edits > 0, 5)
    assert "Picked **owl.png**" in closed.content and not closed.components

    def new_clips() -> list[FakeMessage]:
        bot_id = fake_discord.bot_user.id
        return [
            m
            for m in fake_discord.messages()
            if m.author_id == bot_id and m.attachments and m.id != clip.id
        ]

    await wait_for_message(fake_discord, lambda _: len(new_clips()) == 2, CLIP_TIMEOUT)
    for made in new_clips():
        # The first was made before the reset: it bounces.
        wanted = 2 * TINY_FRAMES - 2 if made.id == as_set.id else TINY_FRAMES
        assert frames_of(made, tmp_path).shape[0] == wanted
        assert f"<@{fake_discord.user.id}>" in made.content
    # The owl was linked inside ||spoiler bars||: its clip is a spoiler too; the dog's is not.
    names = sorted(m.attachments[0].filename for m in new_clips())
    assert names[0].startswith("SPOILER_clip-") and names[1].startswith("clip-"), names


async def test_pictures_over_the_size_limit_are_not_offered_in_the_menu(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, data_dir, max_image_mb=0.25)
    small, large = picture(), picture(640, 400, seed=2)  # about 190 KiB and 750 KiB
    assert len(small) < 0.25 * 2**20 < len(large)
    async with running(settings):
        album = fake_discord.post(
            attachments=[
                ("big.png", large, "image/png"),
                ("a.png", small, "image/png"),
                ("b.png", picture(seed=3), "image/png"),
            ]
        )
        asked = await fake_discord.message_command("Animate", album)
        text = await reply_text(asked)
        assert "1 more is over 0 MiB" not in text and "1 more is over" in text, text
        menu = asked.original
        assert menu is not None
        (select,) = [c for c in menu.iter_components() if c["type"] == 3]
        assert [o["label"] for o in select["options"]] == ["1. a.png", "2. b.png"]
        # With only one that fits, it is the one animated, without a menu.
        pair = fake_discord.post(
            attachments=[("big.png", large, "image/png"), ("a.png", small, "image/png")]
        )
        assert "Got it" in await reply_text(await fake_discord.message_command("Animate", pair))


async def test_a_second_pick_on_a_picture_menu_is_told_it_was_picked_already(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    album = fake_discord.post(
        attachments=[("a.png", picture(), "image/png"), ("b.png", picture(seed=2), "image/png")]
    )
    asked = await fake_discord.message_command("Animate", album)
    assert "2 pictures" in await reply_text(asked)
    menu = asked.original
    assert menu is not None
    (select,) = [c for c in menu.iter_components() if c["type"] == 3]
    # The menu could not be closed after the pick (Discord refused the edit): it stays open.
    fake_discord.faults.add(
        "PATCH",
        rf"^/webhooks/\d+/{asked.token}/messages/@original$",
        404,
        {"message": "Unknown Webhook", "code": 10015},
    )
    first = await fake_discord.click(menu, select["custom_id"], values=["0"])
    assert "Got it" in await reply_text(first)
    second = await fake_discord.click(menu, select["custom_id"], values=["1"])
    # Not Discord's "This interaction failed": answered, and no second clip queued.
    assert "already picked" in await reply_text(second)
    assert second.ephemeral
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**2** of 3" in await reply_text(quota)


async def test_a_picture_menu_from_before_a_restart_says_it_expired(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    # The menu's pictures were in the old process's memory: a pick after the restart is told
    # so, and the menu closes, instead of Discord's "This interaction failed". Nothing charged.
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    album = fake_discord.post(
        attachments=[("a.png", picture(), "image/png"), ("b.png", picture(seed=2), "image/png")]
    )
    async with running(settings):
        asked = await fake_discord.message_command("Animate", album)
        assert "2 pictures" in await reply_text(asked)
    menu = asked.original
    assert menu is not None
    (select,) = [c for c in menu.iter_components() if c["type"] == 3]
    async with running(settings):
        pick = await fake_discord.click(menu, select["custom_id"], values=["1"])
        closed = await wait_for_message(
            fake_discord, lambda m: m.id == menu.id and "expired" in m.content, 10
        )
        assert "Use **Animate** on the message again" in closed.content and not closed.components
        assert pick.response_type == 7  # the menu itself was answered, no new message
        quota = await fake_discord.interaction("quota", permissions=MEMBER)
        assert "**3** of 3" in await reply_text(quota)


async def test_draft_quality_makes_a_full_clip_and_says_so(
    bot: App, fake_discord: FakeDiscordServer, tmp_path: Path
) -> None:
    handle = await animate(fake_discord, quality="draft", seed=9)
    assert "Got it" in await reply_text(handle)
    message = await clip_message(fake_discord, fake_discord.user.id)
    assert frames_of(message, tmp_path).shape[:3] == (TINY_FRAMES, 144, 256)
    assert "quality `draft`" in message.content and "seed `9`" in message.content

    # A re-roll keeps the quality the member chose.
    reroll = next(cid for cid in message.custom_ids if cid.startswith("svd:reroll:"))
    click = await fake_discord.click(message, reroll)
    assert "Got it" in await reply_text(click)
    again = await wait_for_message(
        fake_discord,
        lambda m: bool(m.attachments) and m.id != message.id and "quality `draft`" in m.content,
        CLIP_TIMEOUT,
    )
    assert "seed `9`" not in again.content


async def test_not_an_image_costs_nothing(bot: App, fake_discord: FakeDiscordServer) -> None:
    by_type = await animate(fake_discord, attachment=("notes.txt", b"hello", "text/plain"))
    assert "isn't a picture" in await reply_text(by_type)
    assert by_type.ephemeral

    disguised = await animate(fake_discord, attachment=("cat.png", b"not a png", "image/png"))
    text = await reply_text(disguised)
    assert "PNG" in text and disguised.ephemeral

    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**3** of 3" in await reply_text(quota)


async def test_a_full_disk_refuses_clips_with_a_clear_answer_and_costs_nothing(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    # MIN_FREE_DISK_MB above any disk's free space: this disk is as good as full.
    settings = settings_for(fake_discord, tiny_model_dir, data_dir, min_free_disk_mb=2.0**40)
    async with running(settings):
        await status_shown(fake_discord, "disk is full")  # seen before anyone asks
        shown = await fake_discord.interaction("help", permissions=MEMBER)
        assert "New clips are paused" in await reply_text(shown)
        handle = await animate(fake_discord)
        text = await reply_text(handle)
        assert "out of disk space" in text and "not charged" in text and "later" in text
        assert handle.ephemeral
        quota = await fake_discord.interaction("quota", permissions=MEMBER)
        assert "**3** of 3" in await reply_text(quota)
        queue = await fake_discord.interaction("queue", permissions=MEMBER)
        assert "You have no clips waiting" in await reply_text(queue)


async def test_a_setting_the_full_database_cannot_save_says_so(
    bot: App, fake_discord: FakeDiscordServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(*_args: Any, **_kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")  # SQLite's own words

    monkeypatch.setattr(MemberDefaultsStore, "update", full)
    handle = await fake_discord.interaction("defaults", {"motion": 200}, permissions=MEMBER)
    text = await reply_text(handle)
    assert "out of disk space, so I couldn't do that" in text and "try again later" in text
    assert handle.ephemeral


@pytest.mark.parametrize("failure", ["expired", "hung up"])
async def test_a_picture_that_cannot_be_downloaded_costs_nothing(
    bot: App, fake_discord: FakeDiscordServer, failure: str
) -> None:
    if failure == "expired":
        fake_discord.faults.add("GET", "/cdn/attachments/", 404, {"message": "gone", "code": 0})
    else:  # a network blip: aiohttp's error, whose text names the signed URL
        # (aiohttp tries a GET again once on a dropped connection; Discord stays unreachable)
        fake_discord.faults.disconnect("GET", "/cdn/attachments/", times=None)
    handle = await animate(fake_discord)
    text = await reply_text(handle)
    assert "couldn't download your picture" in text and "upload it again" in text
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**3** of 3" in await reply_text(quota)
    queue = await fake_discord.interaction("queue", permissions=MEMBER)
    assert "You have no clips waiting" in await reply_text(queue)


async def test_quota_runs_out_and_a_moderator_resets_it(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    mod = fake_discord.add_user("mod")
    member = fake_discord.user
    change = await fake_discord.interaction(
        "quota-admin",
        {"limit": "1", "period": "day"},
        subcommand="default",
        user=mod,
        permissions=MANAGE_GUILD,
    )
    assert "3 clips per day → **1 clip per day**" in await reply_text(change)

    await animate(fake_discord)
    await clip_message(fake_discord, member.id)

    def downloads() -> int:
        return sum(r.path.startswith("/cdn/attachments/") for r in fake_discord.requests)

    before = downloads()
    refused = await animate(fake_discord)
    text = await reply_text(refused)
    assert "1" in text and "<t:" in text, text
    assert downloads() == before  # refused before its picture was downloaded
    # /help tells the member where they stand here; moderators also read their commands.
    told = await fake_discord.interaction("help", permissions=MEMBER)
    text = await reply_text(told)
    assert told.ephemeral and "**0** of 1 clip left" in text and "Next clip back <t:" in text
    assert "`/animate image:`" in text and "at most `30` steps here" in text
    assert "/quota-admin" not in text
    told = await fake_discord.interaction("help", user=mod, permissions=MANAGE_GUILD)
    assert "🛡️ **Moderators**: `/quota-admin`" in await reply_text(told)

    reset = await fake_discord.interaction(
        "quota-admin",
        {"user": member.id},
        subcommand="reset",
        user=mod,
        permissions=MANAGE_GUILD,
    )
    assert "Reset" in await reply_text(reset)
    # What the moderator reads to choose limits by (the clip is recorded as posted just after
    # its message appears).
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        usage = await fake_discord.interaction(
            "quota-admin", {"days": 1}, subcommand="usage", user=mod, permissions=MANAGE_GUILD
        )
        text = await reply_text(usage)
        if "**1** clip posted" in text or asyncio.get_running_loop().time() > deadline:
            break
    assert usage.ephemeral and text.startswith("📊 In the last 24 hours: **1** clip posted")
    assert f"Most clips: <@{member.id}> 1" in text
    again = await animate(fake_discord)
    assert "Got it" in await reply_text(again)


async def test_commands_are_answered_in_time_while_another_process_holds_the_database(
    bot: App, fake_discord: FakeDiscordServer, data_dir: Path
) -> None:
    # A backup, or `svd-bot sync` beside the bot, holds SQLite's write lock for 4 s: the
    # moderator's write waits it out, and the member's read waits behind that write. Discord
    # forgets an interaction not answered within 3 s.
    holder = sqlite3.connect(data_dir / "bot.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(4.0, holder.close)
    mod = fake_discord.add_user("mod")
    change = await fake_discord.interaction(
        "quota-admin",
        {"limit": "7", "period": "day"},
        subcommand="default",
        user=mod,
        permissions=MANAGE_GUILD,
    )
    await asyncio.sleep(0.3)  # the write is waiting for the lock
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "3 clips per day → **7 clips per day**" in await reply_text(change)
    assert "**7** of 7" in await reply_text(quota)
    assert change.deferred and quota.deferred and change.ephemeral and quota.ephemeral


async def test_a_deferral_whose_answer_was_lost_still_gets_the_reply(
    bot: App, fake_discord: FakeDiscordServer, data_dir: Path
) -> None:
    # The slow write makes the reply defer; Discord takes the deferral but its answer is lost
    # (a 502 from its edge): sending the reply as a first answer is then refused (40060).
    holder = sqlite3.connect(data_dir / "bot.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(3.0, holder.close)
    fake_discord.faults.server_error(
        "POST", r"^/interactions/\d+/[^/]+/callback$", status=502, after_applying=True
    )
    mod = fake_discord.add_user("mod")
    change = await fake_discord.interaction(
        "quota-admin",
        {"limit": "4", "period": "day"},
        subcommand="default",
        user=mod,
        permissions=MANAGE_GUILD,
    )
    assert "3 clips per day → **4 clips per day**" in await reply_text(change)
    assert change.deferred


async def test_a_period_change_says_what_it_does_to_role_limits_and_none_is_no_limit(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    mod = fake_discord.add_user("mod")

    async def admin(subcommand: str, **options: Any) -> str:
        handle = await fake_discord.interaction(
            "quota-admin", options, subcommand=subcommand, user=mod, permissions=MANAGE_GUILD
        )
        return await reply_text(handle)

    # Role limits count over the server's period: a moderator changing it changes them too.
    text = await admin("default", limit="3", period="week")
    assert "3 clips per day → **3 clips per week**" in text
    assert "Role limits now count per week" in text and "last week count" in text
    assert "Role limits" not in await admin("default", limit="5", period="week")
    # And back to the host's default (3 per day in these tests), which it follows from then on.
    cleared = await admin("default", limit="clear")
    assert "5 clips per week → **3 clips per day** (the bot's default)" in cleared
    assert "Role limits now count per day" in cleared
    again = await admin("default", limit="clear", period="week")
    assert "already follows the bot's default" in again and "`period:week` was not used" in again
    assert "put the server default back to the bot's" in await admin("log")
    await admin("default", limit="5", period="week")
    # "none" reads as "no clips" as much as "no limit": refused, not made unlimited.
    member = fake_discord.user
    refused = await admin("set", user=member.id, limit="none")
    assert "is not a limit" in refused
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**5** of 5" in await reply_text(quota)
    # A member who left can be blocked before they come back (the option took members only:
    # "Failed to convert to Member").
    gone = fake_discord.add_user("gone")
    del fake_discord.guild.members[gone.id]
    assert "→ **blocked**" in await admin("set", user=gone.id, limit="0")
    shown = await admin("show", user=gone.id)
    assert "cannot make clips" in shown and "their own limit" in shown


async def test_a_moderators_cancel_and_delete_of_a_members_clips_are_in_the_log(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    member = fake_discord.user
    managers = fake_discord.add_role("Managers", discord.Permissions(manage_guild=True))
    mod = fake_discord.add_user("mod", roles=[managers])
    await animate(fake_discord)
    clip = await clip_message(fake_discord, member.id)
    await _progress_posted(fake_discord)
    progress = next(
        m
        for m in fake_discord.messages(fake_discord.channel)
        if any(c.startswith("svd:cancel:") for c in m.custom_ids) and not m.deleted
    )
    cancel = next(c for c in progress.custom_ids if c.startswith("svd:cancel:"))

    async def line() -> str:
        handle = await fake_discord.interaction(
            "quota-admin", {}, subcommand="queue", user=mod, permissions=MANAGE_GUILD
        )
        return await reply_text(handle)

    # The moderator sees whose clip is in the line, with a link to its progress message.
    seen = await line()
    assert f"• <@{member.id}>: [`" in seen and f"/{progress.id})" in seen, seen
    cancelled = await fake_discord.click(progress, cancel, user=mod)
    assert f"Cancelled <@{member.id}>'s clip" in await reply_text(cancelled)
    # A clip being made stops at its next step.
    deadline = asyncio.get_running_loop().time() + 10
    while "Nothing of this server's" not in (after := await line()):
        assert asyncio.get_running_loop().time() < deadline, after
        await asyncio.sleep(0.2)
    # The member's /history links to the posted clip and says the other was cancelled.
    history = await fake_discord.interaction("history", permissions=MEMBER)
    lines = (await reply_text(history)).splitlines()
    link = f"https://discord.com/channels/{fake_discord.guild.id}/{clip.channel_id}/{clip.id}"
    assert "cancelled, not charged" in lines[1] and f"[posted]({link})" in lines[2], lines
    delete = next(c for c in clip.custom_ids if c.startswith("svd:delete:"))
    await fake_discord.click(clip, delete, user=mod)
    await eventually(lambda: fake_discord.message(clip.id).deleted)
    # The deletion is recorded just after the message goes.
    deadline = asyncio.get_running_loop().time() + 5
    while link in (
        gone := await reply_text(await fake_discord.interaction("history", permissions=MEMBER))
    ):
        assert asyncio.get_running_loop().time() < deadline, gone
        await asyncio.sleep(0.1)
    assert "posted (deleted since" in gone
    log = await fake_discord.interaction(
        "quota-admin", {}, subcommand="log", user=mod, permissions=MANAGE_GUILD
    )
    lines = (await reply_text(log)).splitlines()
    assert f"<@{mod.id}> deleted <@{member.id}>'s clip" in lines[1], lines
    assert f"<@{mod.id}> cancelled <@{member.id}>'s clip" in lines[2], lines


async def test_a_clip_whose_deferral_answer_was_lost_is_made_all_the_same(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    # /animate's deferral reaches Discord, its answer is lost (502) and discord.py's retry is
    # told "already acknowledged" (40060): the member saw "thinking…" for ever. The deferral
    # stands, so the flow goes on and its answer takes the deferral's place.
    fake_discord.faults.server_error(
        "POST", r"^/interactions/\d+/[^/]+/callback$", status=502, after_applying=True
    )
    handle = await animate(fake_discord)
    assert "Got it" in await reply_text(handle) and handle.deferred
    await clip_message(fake_discord, fake_discord.user.id)
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**2** of 3" in await reply_text(quota)  # one clip, charged once


async def test_quota_admin_checks_permissions_at_run_time(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    # Server admins can let everyone see /quota-admin; the bot still says no.
    handle = await fake_discord.interaction(
        "quota-admin",
        {"user": fake_discord.user.id, "limit": "unlimited"},
        subcommand="set",
        permissions=MEMBER,
    )
    assert "Only moderators" in await reply_text(handle)
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**3** of 3" in await reply_text(quota)


async def test_moderators_clear_a_limit_but_only_managers_pick_moderators(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    member = fake_discord.user
    mods = fake_discord.add_role("Mods")
    mod = fake_discord.add_user("mod", roles=[mods])
    admin = fake_discord.add_user("admin")

    async def quota_admin(who: Any, subcommand: str, permissions: int, **options: Any) -> str:
        handle = await fake_discord.interaction(
            "quota-admin", options, subcommand=subcommand, user=who, permissions=permissions
        )
        return await reply_text(handle)

    text = await quota_admin(admin, "config", MANAGE_GUILD, moderator_role=mods.id)
    assert f"moderator role <@&{mods.id}> (was none)" in text and "Integrations" in text
    # A member of the moderator role moderates, but cannot hand the role to others.
    assert "✅" in await quota_admin(mod, "set", MEMBER, user=member.id, limit="1")
    refused = await quota_admin(mod, "config", MEMBER, moderator_role=fake_discord.guild.id)
    assert "Manage Server" in refused
    # @everyone as the moderator role: refused, saying what it would do, not about limits.
    everyone = await quota_admin(
        admin, "config", MANAGE_GUILD, moderator_role=fake_discord.guild.id
    )
    assert "every member a moderator" in everyone and "default" not in everyone, everyone
    assert "default" in await quota_admin(
        mod, "role", MEMBER, role=fake_discord.guild.id, limit="2"
    )
    # The member's own limit goes; the server default applies again.
    cleared = await quota_admin(mod, "set", MEMBER, user=member.id, limit="clear")
    assert "1 clip per day → **not set**" in cleared, cleared
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**3** of 3" in await reply_text(quota)
    text = await quota_admin(admin, "config", MANAGE_GUILD, clear_moderator_role=True)
    assert f"moderator role none (was <@&{mods.id}>)" in text
    assert "Only moderators" in await quota_admin(mod, "set", MEMBER, user=member.id, limit="1")
    # A role limit counts over the server's period, and the reply says which.
    text = await quota_admin(admin, "role", MANAGE_GUILD, role=mods.id, limit="2")
    assert "not set → **2 clips per day** (the server's period)" in text, text
    # Show names the role a member's limit comes from.
    text = await quota_admin(admin, "show", MANAGE_GUILD, user=mod.id)
    assert f"comes from their role <@&{mods.id}>" in text, text
    # Every change is in the log, newest first, with who made it.
    log = (await quota_admin(admin, "log", MANAGE_GUILD)).splitlines()
    assert f"<@{admin.id}> set the limit for <@&{mods.id}>: not set → **2 clips**" in log[1]
    assert f"moderator role <@&{mods.id}> → **none**" in log[2]
    assert f"<@{mod.id}> removed <@{member.id}>'s own limit (1 clip per day)" in log[3]
    assert f"<@{mod.id}> set <@{member.id}>'s limit: not set → **1 clip per day**" in log[4]
    assert f"moderator role none → **<@&{mods.id}>**" in log[5]
    assert len(log) == 6


async def test_role_limits_apply_in_a_server_the_bot_has_not_cached(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    # A server that added the bot after it connected: no GUILD_CREATE yet, so discord.py's cache
    # knows none of its roles. The interaction still carries the member's role ids.
    late = fake_discord.add_guild("late")
    blocked = late.add_role("blocked")
    newcomer = fake_discord.add_user("newcomer", guild=late, roles=[blocked])
    await bot.service.quotas.set_role_limit(late.id, blocked.id, 0, actor_id=fake_discord.user.id)
    handle = await fake_discord.interaction(
        "animate",
        {"steps": 3},
        user=newcomer,
        guild=late,
        attachment=("cat.png", picture(), "image/png"),
        permissions=MEMBER,
    )
    assert "turned off clips for you" in await reply_text(handle)


async def test_cancel_refunds_the_clip(bot: App, fake_discord: FakeDiscordServer) -> None:
    first = await animate(fake_discord, steps=30)
    await reply_text(first)
    second = await animate(fake_discord, steps=30)
    await reply_text(second)
    cancel = await fake_discord.interaction("cancel", permissions=MEMBER)
    assert "Cancelled 2 clips" in await reply_text(cancel)
    seen: set[int] = set()
    for _ in range(2):
        notice = await wait_for_message(
            fake_discord, lambda m: "was cancelled" in m.content and m.id not in seen, 30
        )
        # The progress message itself ends so, without its Cancel button (no new ping).
        assert notice.edits > 0 and not notice.components, notice
        seen.add(notice.id)
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**3** of 3" in await reply_text(quota, within=30)
    assert len([m for m in fake_discord.messages() if "was cancelled" in m.content]) == 2


async def test_reroll_makes_a_new_clip_with_a_new_seed(
    bot: App, fake_discord: FakeDiscordServer, tmp_path: Path
) -> None:
    # A smooth clip: twice the frames less one, the in-between ones interpolated.
    await animate(fake_discord, seed=7, smooth=True)
    first = await clip_message(fake_discord)
    assert frames_of(first, tmp_path).shape[0] == 2 * TINY_FRAMES - 1
    assert "`smooth`" in first.content
    assert "smoothed with in-between frames" in (first.attachments[0].description or "")
    other = fake_discord.add_user("other")
    reroll = next(c for c in first.custom_ids if c.startswith("svd:reroll:"))
    click = await fake_discord.click(first, reroll, user=other)
    assert "Got it" in await reply_text(click)
    second = await clip_message(fake_discord, other.id)
    assert "seed `7`" not in second.content
    # The re-roll keeps everything but the seed.
    assert frames_of(second, tmp_path).shape[0] == 2 * TINY_FRAMES - 1
    assert "`smooth`" in second.content


async def test_once_its_picture_is_gone_a_clip_offers_no_more_variations(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    # Pictures are kept for days, not for ever: past that, every press would only be told so.
    await animate(fake_discord)
    clip = await clip_message(fake_discord)
    ((input_path,),) = await bot.database.fetch("SELECT input_path FROM jobs")
    await asyncio.to_thread(Path(input_path).unlink)
    reroll = next(c for c in clip.custom_ids if c.startswith("svd:reroll:"))
    click = await fake_discord.click(clip, reroll)
    assert "no longer kept" in await reply_text(click)

    def greyed() -> bool:
        buttons = {
            c["custom_id"].split(":")[1]: c.get("disabled", False)
            for c in fake_discord.message(clip.id).iter_components()
            if "custom_id" in c
        }
        return buttons == {"reroll": True, "more": True, "less": True, "delete": False}

    await eventually(greyed)


async def test_a_double_click_on_re_roll_makes_and_charges_one_clip(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await animate(fake_discord)
    first = await clip_message(fake_discord)
    reroll = next(c for c in first.custom_ids if c.startswith("svd:reroll:"))
    clicks = await asyncio.gather(
        fake_discord.click(first, reroll), fake_discord.click(first, reroll)
    )
    answers = " | ".join([await reply_text(click) for click in clicks])
    assert answers.count("Got it") == 1 and answers.count("pressed that twice") == 1, answers
    await wait_for_message(
        fake_discord, lambda m: bool(m.attachments) and m.id != first.id, CLIP_TIMEOUT
    )
    quota = await fake_discord.interaction("quota", permissions=MEMBER)
    assert "**1** of 3" in await reply_text(quota)  # the first clip and one Re-roll


async def test_a_refused_press_is_not_taken_for_a_double_click(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    """Pressed twice, a button the member may not use says why twice, not "already on it"."""
    member = fake_discord.user
    await animate(fake_discord)
    clip = await clip_message(fake_discord)
    mod = fake_discord.add_user("mod")
    limit = await fake_discord.interaction(
        "quota-admin",
        {"user": member.id, "limit": "1"},
        subcommand="set",
        user=mod,
        permissions=MANAGE_GUILD,
    )
    assert "✅" in await reply_text(limit)

    # Out of clips: both presses of a double click say so.
    reroll = next(c for c in clip.custom_ids if c.startswith("svd:reroll:"))
    clicks = await asyncio.gather(
        fake_discord.click(clip, reroll), fake_discord.click(clip, reroll)
    )
    for click in clicks:
        assert "You have used your 1 clip" in await reply_text(click)

    # Not theirs to delete: both presses say whose it is, and the clip stays.
    other = fake_discord.add_user("other")
    delete = next(c for c in clip.custom_ids if c.startswith("svd:delete:"))
    clicks = await asyncio.gather(
        fake_discord.click(clip, delete, user=other), fake_discord.click(clip, delete, user=other)
    )
    for click in clicks:
        # Deferred first (the checks read the database), the refusal comes as a followup only
        # they see; the clip message is left as it was.
        told = await click.wait_followup(lambda m: "Only the member who made" in m.content)
        assert told.ephemeral
    assert not fake_discord.message(clip.id).deleted

    # The member's own press deletes it; a second one right after is the double click.
    await fake_discord.click(clip, delete)
    again = await fake_discord.click(clip, delete)
    assert "Already deleting" in await reply_text(again)
    await eventually(lambda: fake_discord.message(clip.id).deleted)


async def test_an_old_clip_whose_record_was_forgotten_can_still_be_deleted_by_its_requester(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await animate(fake_discord)
    clip = await clip_message(fake_discord, fake_discord.user.id)
    await _until_delivered(bot, CLIP_TIMEOUT)
    # Months later: the files went after a week, the job's record after KEEP_HISTORY_DAYS.
    months = datetime.now(UTC) + timedelta(days=120)
    assert await bot.service.clean_up(now=months) == 1
    assert await bot.service.forget_history(now=months) == 1
    delete = next(c for c in clip.custom_ids if c.startswith("svd:delete:"))
    other = fake_discord.add_user("other")
    refused = await fake_discord.click(clip, delete, user=other)
    await refused.wait_followup(lambda m: "Only the member who made" in m.content)
    assert not fake_discord.message(clip.id).deleted
    await fake_discord.click(clip, delete)  # the member the clip's message names
    await eventually(lambda: fake_discord.message(clip.id).deleted)


async def test_expired_token_falls_back_to_the_channel(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await _progress_posted(fake_discord)
    # The queue took longer than Discord lets a token live.
    fake_discord.clock.advance(16 * 60)
    message = await clip_message(fake_discord, fake_discord.user.id)
    assert message.webhook_id is None  # posted with the bot token, not the interaction's
    # Not a reply: the progress message it would point at is deleted once the clip is up.
    assert message.reference_id is None and f"<@{fake_discord.user.id}>" in message.content
    await eventually(
        lambda: (
            not [m for m in fake_discord.messages() if "Animating" in m.content and not m.deleted]
        )
    )
    assert any(r.status == 401 for r in fake_discord.requests)


# An overwrite in the member's channel that lets the command through but not the bot's posts.
NO_POSTING = discord.Permissions(send_messages=True, attach_files=True).value


async def _progress_message(server: FakeDiscordServer) -> FakeMessage:
    """A clip long enough to follow: its progress message, once it is up."""
    handle = await animate(server, steps=10)
    await reply_text(handle)
    return await handle.wait_followup(lambda m: "clip" in m.content, timeout=10)


async def _progress_posted(server: FakeDiscordServer, **options: Any) -> Any:
    """A clip long enough to follow, once its progress message is up."""
    handle = await animate(server, steps=10, **options)
    await reply_text(handle)
    await handle.wait_followup(lambda m: "clip" in m.content, timeout=10)
    return handle


async def _past_the_token(server: FakeDiscordServer, **options: Any) -> Any:
    """A clip whose queue outlasts its interaction token (the bot must use its own)."""
    handle = await _progress_posted(server, **options)
    server.clock.advance(16 * 60)
    return handle


async def _clips(app: App) -> list[tuple[str, str]]:
    """Each job's state and its quota reservation's: a clip is charged once it is delivered."""
    rows = await app.database.fetch(
        "SELECT j.state, q.state FROM jobs j JOIN quota_usage q USING (job_id) ORDER BY j.rowid"
    )
    return [(str(job), str(quota)) for job, quota in rows]


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    """The first truthy result of `check` (a function or a coroutine function), polled."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"{check.__name__} never held within {within} s")


async def _until_delivered(app: App, within: float = 10.0) -> None:
    async def delivered() -> bool:
        return await _clips(app) == [("delivered", "charged")]

    await eventually(delivered, within)


async def test_a_clip_the_bot_may_not_post_in_the_channel_reaches_the_member_by_dm(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    fake_discord.deny_bot(NO_POSTING)
    handle = await _past_the_token(fake_discord)
    # Told at once, while the member can still open their DMs.
    assert "comes to you by DM" in await reply_text(handle)
    member = fake_discord.user

    def dm_clip() -> FakeMessage | None:
        return next((m for m in fake_discord.dms(member) if m.attachments), None)

    message = await eventually(dm_clip, CLIP_TIMEOUT)
    assert "your clip is ready" in message.content
    assert "Send Messages and Attach Files" in message.content  # why, and who can fix it
    assert f"<#{fake_discord.channel.id}>" in message.content
    assert not message.components  # no server buttons in a DM
    assert not [m for m in fake_discord.messages(fake_discord.channel) if m.attachments]
    await _until_delivered(bot)
    # /history links to it in the member's DMs.
    history = await reply_text(await fake_discord.interaction("history", permissions=MEMBER))
    assert f"(https://discord.com/channels/@me/{message.channel_id}/{message.id})" in history


async def test_a_clip_whose_channel_was_deleted_reaches_the_member_by_dm(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    channel = fake_discord.channel
    await _past_the_token(fake_discord)
    fake_discord.delete_channel()
    member = fake_discord.user

    def dm_clip() -> FakeMessage | None:
        return next((m for m in fake_discord.dms(member) if m.attachments), None)

    message = await eventually(dm_clip, CLIP_TIMEOUT)
    assert "your clip is ready" in message.content
    assert f"(<#{channel.id}>) no longer exists" in message.content  # not "permissions"
    await _until_delivered(bot)


@pytest.mark.usefixtures("quick_discord_retries")
async def test_a_dm_discord_stored_before_a_server_error_is_not_sent_twice(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await _past_the_token(fake_discord)
    fake_discord.delete_channel()
    member = fake_discord.user
    dm = fake_discord.world.dm_channel(member.id)
    # Discord keeps the DM, then its edge answers 502 to each of discord.py's tries.
    fault = fake_discord.faults.server_error(
        "POST", rf"^/channels/{dm.id}/messages$", status=502, times=5, after_applying=True
    )
    await eventually(lambda: fault.fired == 5, CLIP_TIMEOUT)

    # The clip is tried again (the next try made due now).
    async def tried_again() -> bool:
        for retry in bot.service._undelivered.values():
            retry.next_at = 0.0
        return await bot.service.redeliver_due(bot.bot.presenter) == 1

    await eventually(tried_again, 10)
    await _until_delivered(bot)
    clips = [m for m in fake_discord.dms(member) if m.attachments]
    assert len(clips) == 1, [m.content[:40] for m in clips]


async def test_a_clip_too_large_for_a_dm_is_re_encoded_to_fit(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    fake_discord.deny_bot(NO_POSTING)
    member = fake_discord.user
    dm = fake_discord.world.dm_channel(member.id)
    # A DM takes less than the server did: Discord refuses the first upload.
    fake_discord.faults.add(
        "POST", rf"^/channels/{dm.id}/messages$", 413, {"code": 40005, "message": "too large"}
    )
    await _past_the_token(fake_discord)

    def dm_clip() -> FakeMessage | None:
        return next((m for m in fake_discord.dms(member) if m.attachments), None)

    message = await eventually(dm_clip, CLIP_TIMEOUT)
    refused = [r for r in fake_discord.requests if r.status == 413]
    assert len(refused) == 1 and refused[0].files
    assert message.attachments[0].size < refused[0].files[0].size
    await _until_delivered(bot)


async def test_a_token_answering_unknown_webhook_early_falls_back_to_the_channel(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await _progress_posted(fake_discord)
    # Well within its 15 minutes, Discord answers 404 Unknown Webhook to the token.
    fake_discord.faults.add(
        "POST", r"^/webhooks/\d+/[^/]+$", 404, {"code": 10015, "message": "Unknown Webhook"}
    )
    message = await clip_message(fake_discord, fake_discord.user.id)
    assert message.webhook_id is None  # posted with the bot token instead
    await _until_delivered(bot)


async def test_a_channel_the_bot_cannot_see_gets_the_dm_warning(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    fake_discord.deny_bot(discord.Permissions(view_channel=True))
    handle = await animate(fake_discord)
    assert "comes to you by DM" in await reply_text(handle)


async def test_a_clip_asked_for_in_a_thread_is_posted_in_that_thread(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    thread = fake_discord.add_thread("cats")
    # Threads go by Send Messages in Threads: the parent's Send Messages does not matter.
    fake_discord.deny_bot(discord.Permissions(send_messages=True))
    handle = await fake_discord.interaction(
        "animate",
        {"steps": 10},
        attachment=("cat.png", picture(), "image/png"),
        permissions=MEMBER,
        channel=thread,
    )
    assert "DM" not in await reply_text(handle)
    await handle.wait_followup(lambda m: "clip" in m.content, timeout=10)  # the progress message
    fake_discord.clock.advance(16 * 60)  # the clip comes after the token, with the bot's own

    def in_thread() -> FakeMessage | None:
        return next((m for m in fake_discord.messages(thread) if m.attachments), None)

    message = await eventually(in_thread, CLIP_TIMEOUT)
    assert message.webhook_id is None and f"<@{fake_discord.user.id}>" in message.content
    await _until_delivered(bot)


async def test_without_read_message_history_the_clip_is_still_posted_in_the_channel(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    fake_discord.deny_bot(discord.Permissions(read_message_history=True).value)
    handle = await _past_the_token(fake_discord)
    assert "DM" not in await reply_text(handle)  # no false warning
    message = await clip_message(fake_discord, fake_discord.user.id)
    assert message.webhook_id is None  # the bot's own post, in the channel
    assert not [m for m in fake_discord.dms(fake_discord.user) if m.attachments]


async def test_a_clip_nobody_would_take_is_handed_over_by_queue(
    bot: App, fake_discord: FakeDiscordServer, tmp_path: Path
) -> None:
    handle = await _past_the_token(fake_discord)
    assert "DM" not in await reply_text(handle)  # it could post here when it was asked
    fake_discord.deny_bot(NO_POSTING)
    fake_discord.close_dms(fake_discord.user)

    def dm_refused() -> bool:
        return any(
            r.kind == "channel_send"
            and isinstance(r.response, dict)
            and r.response.get("code") == 50007
            for r in fake_discord.requests
        )

    await eventually(dm_refused, CLIP_TIMEOUT)
    assert await _clips(bot) == [("done", "reserved")]  # kept, and not charged
    # Its progress message no longer says "Encoding", nor offers a Cancel that cannot work.
    kept = await wait_for_message(fake_discord, lambda m: "could not post it here" in m.content, 10)
    assert not kept.components and "/queue" in kept.content

    asked = await fake_discord.interaction("queue", {}, permissions=MEMBER)
    assert "finished: posting it now" in await reply_text(asked)
    posted = await asked.wait_followup(lambda m: bool(m.attachments), timeout=10)
    assert not posted.ephemeral and "your clip is ready" in posted.content
    assert posted.components  # Re-roll and Delete, as on any clip
    assert frames_of(posted, tmp_path).shape[0] == TINY_FRAMES
    await _until_delivered(bot)
    # Asked again: nothing left to hand over, nothing posted twice.
    again = await fake_discord.interaction("queue", {}, permissions=MEMBER)
    assert "no clips waiting" in await reply_text(again)
    await asyncio.sleep(0.5)
    assert not [m for m in again.followups if m.attachments]


async def test_a_kept_clip_asked_for_elsewhere_is_handed_over_only_to_its_member(
    bot: App, fake_discord: FakeDiscordServer, tmp_path: Path
) -> None:
    # A clip of the staff channel must not go up in #lounge because its member typed /queue
    # there: it comes to them alone, and says where it was asked for.
    await _past_the_token(fake_discord)
    fake_discord.deny_bot(NO_POSTING)
    fake_discord.close_dms(fake_discord.user)
    await wait_for_message(fake_discord, lambda m: "could not post it here" in m.content, 60)
    lounge = fake_discord.guild.add_channel("lounge")
    asked = await fake_discord.interaction("queue", {}, permissions=MEMBER, channel=lounge)
    posted = await asked.wait_followup(lambda m: bool(m.attachments), timeout=10)
    assert posted.ephemeral and f"<#{fake_discord.channel.id}>" in posted.content
    assert frames_of(posted, tmp_path).shape[0] == TINY_FRAMES
    assert not [m for m in fake_discord.messages(lounge) if m.attachments and not m.ephemeral]
    await _until_delivered(bot)


@pytest.mark.usefixtures("quick_discord_retries")
async def test_a_server_error_after_discord_stored_the_clip_does_not_post_it_twice(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await _past_the_token(fake_discord)
    # Discord keeps the clip, then its edge answers 502 to each of discord.py's five tries
    # (which share one nonce): the bot must find it posted, not post it again or say it failed.
    fault = fake_discord.faults.server_error(
        "POST", r"^/channels/\d+/messages$", status=502, times=5, after_applying=True
    )

    await _until_delivered(bot, CLIP_TIMEOUT + 5)  # discord.py's tries: 2.5 s, quickened
    assert fault.fired == 5
    await asyncio.sleep(0.5)
    clips = [m for m in fake_discord.messages(fake_discord.channel) if m.attachments]
    assert len(clips) == 1, [m.content[:40] for m in clips]
    said = [m.content for m in fake_discord.messages(fake_discord.channel)]
    assert not [text for text in said if "would not accept" in text], said


async def test_a_followup_discord_stored_before_a_server_error_is_not_left_twice(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await _progress_posted(fake_discord)
    # The clip's followup is stored, then answered 502: discord.py posts it again (a webhook
    # takes no nonce), and the second succeeds. (discord.py's real waits: the bot tells a post
    # sent again by the second it took.)
    fake_discord.faults.server_error(
        "POST", r"^/webhooks/\d+/[^/]+$", status=502, after_applying=True
    )
    await _until_delivered(bot, CLIP_TIMEOUT)
    await asyncio.sleep(0.5)
    everything = fake_discord.world.messages.in_channel(
        fake_discord.channel.id, include_deleted=True
    )
    clips = [m for m in everything if m.attachments]
    assert len(clips) == 2  # it was posted twice ...
    assert len([m for m in clips if not m.deleted]) == 1  # ... and one copy was deleted


async def test_a_posted_clip_is_recorded_before_its_progress_message_is_tidied_away(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    progress = await _progress_message(fake_discord)
    # Discord holds the progress message's removal back (a 429): a crash or a stop meanwhile
    # left a posted clip recorded as not posted, to be posted again after the restart.
    fake_discord.faults.rate_limit("DELETE", rf"/messages/{progress.id}$", retry_after=4)
    await clip_message(fake_discord)
    await _until_delivered(bot, within=3)

    def gone() -> bool:
        everything = fake_discord.world.messages.in_channel(
            fake_discord.channel.id, include_deleted=True
        )
        return next(m for m in everything if m.id == progress.id).deleted

    assert not gone()  # still waiting out the rate limit
    await eventually(gone, within=10)


async def test_a_progress_message_a_moderator_deleted_is_left_alone(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    progress = await _progress_message(fake_discord)
    fake_discord.world.delete_message(progress.id)
    await clip_message(fake_discord)
    await _until_delivered(bot)
    # Each refused edit counts toward the invalid requests Discord bans a bot for: one is enough
    # to learn the message is gone, and no other step of the clip is sent to it.
    refused = [
        r for r in fake_discord.requests if r.path.endswith(f"/{progress.id}") and r.status == 404
    ]
    assert len(refused) == 1, [(r.method, r.path) for r in refused]


def _refuse_the_next_upload_as_too_large(server: FakeDiscordServer) -> None:
    """Discord's 413 to the next followup (once the progress message is up: the clip's)."""
    server.faults.add(
        "POST",
        r"^/webhooks/\d+/[^/]+$",
        413,
        {"code": 40005, "message": "Request entity too large"},
        times=1,
    )


async def test_upload_refused_as_too_large_is_reencoded_smaller(
    bot: App, fake_discord: FakeDiscordServer
) -> None:
    await _progress_posted(fake_discord)
    # The clip's own upload is the next followup.
    _refuse_the_next_upload_as_too_large(fake_discord)
    message = await clip_message(fake_discord)
    refused = [r for r in fake_discord.requests if r.status == 413]
    assert len(refused) == 1 and refused[0].files  # it was the clip that was refused
    assert message.attachments[0].size < refused[0].files[0].size  # and re-encoded smaller
    await _until_delivered(bot)
    # Neither the clip nor its smaller copy is left on the disk once it is posted.
    assert list(bot.settings.outputs_dir.iterdir()) == []


async def test_a_clip_refused_as_too_large_twice_is_shrunk_from_the_clip_itself(
    bot: App, fake_discord: FakeDiscordServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reencode = bot.bot.presenter._reencode
    sources: list[tuple[str, int]] = []

    def spy(path: Path, budget: int) -> Path:
        sources.append((path.name, budget))
        return reencode(path, budget)

    monkeypatch.setattr(bot.bot.presenter, "_reencode", spy)
    # The test's clips are tiny: shrinking one twice goes below the floor meant for real ones.
    monkeypatch.setattr(presenter_module, "MIN_REENCODE_BYTES", 1024)
    await _progress_posted(fake_discord)
    _refuse_the_next_upload_as_too_large(fake_discord)
    _refuse_the_next_upload_as_too_large(fake_discord)
    message = await clip_message(fake_discord)
    refused = [r for r in fake_discord.requests if r.status == 413]
    assert len(refused) == 2 and message.attachments[0].size < refused[1].files[0].size
    # Each copy from the clip as made: a copy of a copy would add its losses to the first's.
    assert len(sources) == 2 and len({name for name, _ in sources}) == 1, sources
    assert sources[1][1] < sources[0][1]
    await _until_delivered(bot)
    assert list(bot.settings.outputs_dir.iterdir()) == []


async def test_a_clip_too_large_with_no_room_to_shrink_it_is_kept_and_the_member_told(
    bot: App, fake_discord: FakeDiscordServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(path: Path, budget: int) -> Path:
        raise DiskFull(f"re-encoding {path.name}: No space left on device")

    monkeypatch.setattr(bot.bot.presenter, "_reencode", no_room)
    handle = await _progress_posted(fake_discord)
    _refuse_the_next_upload_as_too_large(fake_discord)
    told = await handle.wait_followup(lambda m: "no disk space left" in m.content, timeout=30)
    assert "kept safe" in told.content and "not charged" in told.content
    await asyncio.sleep(0.3)
    assert not [m for m in fake_discord.messages(fake_discord.channel) if m.attachments]
    assert len(list(bot.settings.outputs_dir.iterdir())) == 1  # the clip, kept for a retry


async def test_a_clip_that_fails_before_on_ready_still_reaches_its_member(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    # Interactions arrive as soon as the gateway is READY; discord.py's on_ready waits for every
    # server's GUILD_CREATE first (up to guild_ready_timeout after the last). Outcomes in that
    # window must not be lost.
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings):
        pass  # registers the commands
    sessions = len(fake_discord.gateway.sessions)
    slow_ready = running(settings, failing_engine(), guild_ready_timeout=8.0, until_ready=False)
    async with slow_ready as app:
        await fake_discord.recorder.wait_until(
            lambda: len(fake_discord.gateway.sessions) > sessions, 30, "the bot to IDENTIFY"
        )
        handle = await animate(fake_discord)
        await handle.wait_followup(lambda m: "bad moment" in m.content, timeout=6)
        assert not app.bot.is_ready()  # told before on_ready
        status = await app.service.quotas.status(fake_discord.guild.id, fake_discord.user.id, ())
        assert status.used == 0


def failing_engine() -> FakeEngine:
    return FakeEngine(
        step_seconds=0.001,
        frames=TINY_FRAMES,
        fail_when=lambda _o: GenerationFailed("The GPU had a bad moment.", reason="error"),
    )


async def test_a_clip_that_fails_where_the_bot_may_not_post_is_still_told(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    # Its token spent, the bot cannot post the failure in the channel: the progress message
    # (its own, which it may still edit) says it, and the member hears it by DM.
    go = threading.Event()

    def fail_later(_options: Any) -> BaseException:
        go.wait(20)
        return GenerationFailed("The GPU had a bad moment.", reason="error")

    engine = FakeEngine(step_seconds=0.01, frames=TINY_FRAMES, fail_when=fail_later)
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings, engine=engine):
        await _past_the_token(fake_discord)
        fake_discord.deny_bot(NO_POSTING)
        go.set()
        progress = await wait_for_message(fake_discord, lambda m: "bad moment" in m.content, 20)
        assert not progress.deleted and not progress.components
        dm = await eventually(
            lambda: [m for m in fake_discord.dms(fake_discord.user) if "bad moment" in m.content]
        )
        assert "not charged" in dm[0].content


@pytest.mark.parametrize("download_seconds", [0.0, 11.0], ids=["small picture", "slow download"])
async def test_a_clip_that_fails_at_once_is_told_apart_from_got_it(
    fake_discord: FakeDiscordServer,
    tiny_model_dir: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    download_seconds: float,
) -> None:
    # Discord's round trip for the "Got it" edit is longer than the clip takes to fail.
    edit = discord.Interaction.edit_original_response

    async def slow_edit(self: discord.Interaction, **fields: Any) -> Any:
        await asyncio.sleep(0.4)
        return await edit(self, **fields)

    monkeypatch.setattr(discord.Interaction, "edit_original_response", slow_edit)
    # A big picture on a slow link: the job is made long after the command.
    read = discord.Attachment.read

    async def slow_read(self: discord.Attachment, **kwargs: Any) -> bytes:
        await asyncio.sleep(download_seconds)
        return await read(self, **kwargs)

    monkeypatch.setattr(discord.Attachment, "read", slow_read)
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings, engine=failing_engine()):
        handle = await animate(fake_discord)
        told = await handle.wait_followup(lambda m: "bad moment" in m.content, timeout=25)
        assert "Got it" in await reply_text(handle)  # the answer, and the failure beside it
        assert not told.deleted
        await asyncio.sleep(0.5)
        # No progress message is left behind with a Cancel button for a clip that is gone.
        left = [m for m in fake_discord.messages(fake_discord.channel) if not m.deleted]
        assert not [m for m in left if "cancel" in str(list(m.iter_components()))]


@pytest.mark.parametrize("failure", ["server error", "hung up"])
@pytest.mark.usefixtures("quick_discord_retries")
async def test_a_discord_error_after_queueing_does_not_say_try_again(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path, failure: str
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings, engine=FakeEngine(step_seconds=0.01, frames=TINY_FRAMES)) as app:
        # Discord fails the progress message's post, retries included: with a 5xx, or a
        # connection closed under it (an aiohttp error, not a discord.HTTPException).
        followup = r"^/webhooks/\d+/[^/]+$"
        if failure == "server error":
            fake_discord.faults.add(
                "POST", followup, 503, {"message": "unavailable", "code": 0}, times=5
            )
        else:
            fake_discord.faults.disconnect("POST", followup)
        handle = await animate(fake_discord)
        posted = await clip_message(fake_discord, fake_discord.user.id)
        assert posted.attachments
        await asyncio.sleep(1.0)  # the flow's own error, if any, lands right after
        told = [m.content for m in handle.messages]
        assert told and not [text for text in told if "not charged" in text], told
        status = await app.service.quotas.status(fake_discord.guild.id, fake_discord.user.id, ())
        assert status.used == 1  # one clip, made once and charged once


@pytest.mark.usefixtures("quick_discord_retries")
async def test_a_failed_got_it_edit_leaves_the_progress_message_and_the_clip_public(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings, engine=FakeEngine(step_seconds=0.05, frames=TINY_FRAMES)):
        # The "Got it" edit fails, retries included. Discord then puts the next followup in
        # place of "thinking…", as ephemeral as it: the progress message, or the clip.
        fake_discord.faults.add(
            "PATCH",
            r"^/webhooks/\d+/[^/]+/messages/@original$",
            503,
            {"message": "unavailable", "code": 0},
            times=5,
        )
        handle = await animate(fake_discord, steps=6)
        posted = await clip_message(fake_discord, fake_discord.user.id)
        assert not posted.ephemeral
        assert "Got it" in await reply_text(handle)
        progress = [m for m in handle.followups if "clip" in m.content and not m.attachments]
        assert progress and not any(m.ephemeral for m in progress)


async def test_a_got_it_edit_that_fails_slowly_still_leaves_the_clip_public(
    fake_discord: FakeDiscordServer,
    tiny_model_dir: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Discord's 5xx answers to the "Got it" edit, retried by discord.py for about 25 s (here
    # 12 s, then a dropped connection): longer than the clip takes. Its outcome must wait for
    # the command's flow, not take the place of "thinking…" as an ephemeral followup.
    async def slow_failing(self: discord.Interaction, **fields: Any) -> Any:
        await asyncio.sleep(12)
        raise aiohttp.ServerDisconnectedError()

    monkeypatch.setattr(discord.Interaction, "edit_original_response", slow_failing)
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings, engine=FakeEngine(step_seconds=0.01, frames=TINY_FRAMES)):
        handle = await animate(fake_discord)
        posted = await clip_message(fake_discord, fake_discord.user.id)
        assert not posted.ephemeral
        assert "Got it" in await reply_text(handle)
        await asyncio.sleep(0.5)
        # No public progress message is left behind, with its Cancel, for a clip that is up.
        left = [m for m in fake_discord.messages(fake_discord.channel) if not m.deleted]
        assert not [m for m in left if "svd:cancel:" in str(m.custom_ids)]


async def test_a_progress_message_whose_id_was_not_saved_is_still_the_only_one(
    fake_discord: FakeDiscordServer,
    tiny_model_dir: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    async with running(settings, engine=FakeEngine(step_seconds=0.5, frames=TINY_FRAMES)) as app:
        jobs = app.service._jobs
        update = jobs.update
        lost: list[int] = []

        async def locked(job_id: str, **changes: Any) -> Any:
            if "progress_message_id" in changes and not lost:
                lost.append(changes["progress_message_id"])
                raise sqlite3.OperationalError("database is locked")
            return await update(job_id, **changes)

        monkeypatch.setattr(jobs, "update", locked)
        monkeypatch.setattr(presenter_module, "PROGRESS_POST_GRACE", timedelta(seconds=0))
        handle = await animate(fake_discord, steps=8)
        await clip_message(fake_discord, fake_discord.user.id)
        await _until_delivered(app)

        def progress_messages() -> list[Any]:
            everything = fake_discord.world.messages.in_channel(
                fake_discord.channel.id, include_deleted=True
            )
            return [m for m in everything if "svd:cancel:" in str(m.custom_ids)]

        # Tidied away just after the clip is recorded as posted, not before.
        await eventually(lambda: all(m.deleted for m in progress_messages()))
        progress = progress_messages()
        # One progress message, followed to the end and tidied away: not a second one posted
        # beside it, with the first left saying "next in line" and offering Cancel for ever.
        assert [m.id for m in progress] == lost and progress[0].deleted
        assert progress[0].edits > 0
        assert "Got it" in await reply_text(handle)


@pytest.mark.usefixtures("quick_discord_retries")
async def test_a_progress_message_the_bot_posts_itself_pings_no_one(
    fake_discord: FakeDiscordServer,
    tiny_model_dir: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    monkeypatch.setattr(presenter_module, "PROGRESS_POST_GRACE", timedelta(seconds=0))
    async with running(settings, engine=FakeEngine(step_seconds=0.5, frames=TINY_FRAMES)) as app:
        # The command's own progress message fails, retries included: the bot posts it itself.
        fake_discord.faults.add(
            "POST", r"^/webhooks/\d+/[^/]+$", 503, {"message": "unavailable", "code": 0}, times=5
        )
        await animate(fake_discord, steps=8)
        await clip_message(fake_discord, fake_discord.user.id)
        await _until_delivered(app)
        posts = [
            r
            for r in fake_discord.requests
            if r.method == "POST" and r.status == 200 and "svd:cancel:" in str(r.json)
        ]
        assert len(posts) == 1, posts
        assert str(fake_discord.user.id) not in str(posts[0].json.get("allowed_mentions"))


async def test_restart_in_the_middle_of_the_queue_loses_nothing(
    fake_discord: FakeDiscordServer, tiny_model_dir: Path, data_dir: Path
) -> None:
    settings = settings_for(fake_discord, tiny_model_dir, data_dir)
    other = fake_discord.add_user("other")
    async with running(settings) as app:
        for user in (fake_discord.user, other):
            assert "Got it" in await reply_text(await animate(fake_discord, user=user, steps=10))
        snapshot = app.queue.snapshot()
        assert len(snapshot.waiting) + len(snapshot.running) == 2
    # The bot stopped (the running clip may have finished in the grace period); each clip left
    # unfinished says so on its progress message, rather than "step 4/10".
    paused = [m for m in fake_discord.messages() if "bot is restarting" in m.content]
    posted = [m for m in fake_discord.messages() if m.attachments]
    assert paused and len(paused) + len(posted) == 2, [m.content for m in fake_discord.messages()]
    assert all(not m.deleted and m.components for m in paused)  # Cancel works once it is back
    # A new process picks them up.
    async with running(settings) as app:
        await clip_message(fake_discord, fake_discord.user.id)
        await clip_message(fake_discord, other.id)
        for user in (fake_discord.user, other):
            status = await app.service.quotas.status(fake_discord.guild.id, user.id, ())
            assert status.used == 1


async def test_commands_refuse_direct_messages(bot: App, fake_discord: FakeDiscordServer) -> None:
    handle = await fake_discord.interaction("quota", dm=True)
    assert "servers" in await reply_text(handle)

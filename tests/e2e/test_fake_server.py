"""The fake Discord server, checked with a minimal real discord.py bot.

Each fault test shows the fault reaching discord.py as Discord's own would: discord.py waits out
the 429, retries the 502, resumes the dropped gateway, and raises the HTTPException (status and
code) that a bot has to handle for an expired token, a late answer or an oversized upload.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.http import Route
from PIL import Image

from tests.fakes.discord_client import running_bot_process, running_client
from tests.fakes.discord_gateway import GATEWAY_PATH, RESUME_PATH
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.discord_validation import validate_commands

CHANNEL_MESSAGES = r"^/channels/\d+/messages$"


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class ClickView(discord.ui.View):
    @discord.ui.button(label="Click", custom_id="click-me")
    async def click(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content=f"clicked by {interaction.user.name}")


class EchoBot(discord.Client):
    """/echo sends the attached file back; /hold leaves the interaction to the test."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)
        self.held: asyncio.Queue[discord.Interaction] = asyncio.Queue()
        self.resumed = asyncio.Event()

        @self.tree.command(description="Send the attached file back")
        async def echo(
            interaction: discord.Interaction, image: discord.Attachment, text: str = ""
        ) -> None:
            data = await image.read()  # the URL expires: download before anything else
            await interaction.response.defer(thinking=True)
            clip = discord.File(io.BytesIO(data), filename=f"echo-{image.filename}")
            await interaction.followup.send(text or "here it is", file=clip)
            await interaction.edit_original_response(content="done")

        @self.tree.command(description="Do nothing: the test answers")
        async def hold(interaction: discord.Interaction) -> None:
            await self.held.put(interaction)

        @self.tree.command(description="Show a button")
        async def button(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("not clicked", view=ClickView())

        settings = app_commands.Group(name="settings", description="Server settings")
        quota = app_commands.Group(name="quota", description="Quotas", parent=settings)

        @quota.command(name="set", description="Set a member's quota")
        async def quota_set(
            interaction: discord.Interaction,
            member: discord.Member,
            role: discord.Role,
            limit: app_commands.Range[int, 0, 100],
        ) -> None:
            allowed = interaction.permissions.manage_guild
            answer = f"{member.name} {role.name} {limit} manage_guild={allowed}"
            await interaction.response.send_message(answer, ephemeral=True)

        self.tree.add_command(settings)

    async def on_resumed(self) -> None:
        self.resumed.set()

    async def next_held(self) -> discord.Interaction:
        return await asyncio.wait_for(self.held.get(), timeout=5)


@pytest.fixture
async def bot(fake_discord: FakeDiscordServer) -> AsyncIterator[EchoBot]:
    client = EchoBot()
    async with running_client(client, fake_discord):
        await client.tree.sync()
        yield client


async def test_login_reaches_on_ready_with_guild_roles_channels_and_members(
    fake_discord: FakeDiscordServer,
) -> None:
    server = fake_discord
    mods = server.guild.add_role("Mods", discord.Permissions(manage_guild=True))
    mod = server.add_user("mod", roles=[mods])
    intents = discord.Intents.default()
    intents.members = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.1)

    async with running_client(client, server):
        identify = await server.wait_for_frame(2)
        guild = client.get_guild(server.guild.id)
        assert guild is not None and guild.name == "Test Guild"
        assert client.user is not None and client.user.id == server.bot_user.id
        assert {m.name for m in guild.members} == {"SVD Bot", "owner", "tester", "mod"}
        moderator, tester = guild.get_member(mod.id), guild.get_member(server.user.id)
        assert moderator is not None and moderator.guild_permissions.manage_guild
        assert tester is not None and not tester.guild_permissions.manage_guild
        assert guild.me.guild_permissions.attach_files
        assert isinstance(client.get_channel(server.channel.id), discord.TextChannel)
        assert identify.path == GATEWAY_PATH and identify.data["intents"] == intents.value
        assert client.latency < 1.0  # the first heartbeat was acknowledged (else: infinity)
    assert [r.kind for r in server.requests[:2]] == ["me", "application"]


async def test_sync_refuses_a_command_discord_would_refuse(fake_discord: FakeDiscordServer) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.1)
    tree = app_commands.CommandTree(client)

    @tree.command(
        description="x" * 101
    )  # Discord allows 1-100 characters; discord.py doesn't check
    async def wordy(interaction: discord.Interaction) -> None:
        pass

    async with running_client(client, fake_discord):
        with pytest.raises(discord.HTTPException) as caught:
            await tree.sync()
    assert (caught.value.status, caught.value.code) == (400, 50035)
    assert "In 0.description: Must be between 1 and 100 in length." in caught.value.text
    assert fake_discord.commands() == []


def option(name: str, type: int = 3, required: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": "d", "type": type, "required": required, **extra}


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ({"name": "Animate", "description": "d"}, ["0", "name"]),
        ({"name": "animate", "description": ""}, ["0", "description"]),
        (
            {"name": "a", "description": "d", "options": [option("x"), option("y", required=True)]},
            ["0", "options", "1", "required"],
        ),
        (
            {
                "name": "a",
                "description": "d",
                "options": [
                    option("x", choices=[{"name": str(i), "value": str(i)} for i in range(26)])
                ],
            },
            ["0", "options", "0", "choices"],
        ),
        (
            {"name": "a", "description": "d", "options": [option(f"o{i}") for i in range(26)]},
            ["0", "options"],
        ),
        (
            {"name": "a", "description": "d", "options": [option("sub", type=1), option("x")]},
            ["0", "options"],
        ),
        (
            {
                "name": "a",
                "description": "d",
                "options": [option("g", type=2, options=[option("h", type=2, options=[])])],
            },
            ["0", "options", "0", "options"],
        ),
    ],
    ids=[
        "uppercase",
        "no-description",
        "required-after-optional",
        "26-choices",
        "26-options",
        "subcommand-beside-option",
        "group-in-group",
    ],
)
def test_command_rules_match_discords(command: dict[str, Any], where: list[str]) -> None:
    errors = validate_commands([command], is_global=True)
    for key in where:
        assert key in errors, f"expected an error at {where}, got {errors}"
        errors = errors[key]


def test_a_well_formed_command_tree_passes() -> None:
    animate = {
        "name": "animate",
        "description": "Animate a still image",
        "options": [
            option("image", type=11, required=True),
            option("motion", type=4, choices=[{"name": "low", "value": 1}]),
        ],
    }
    settings = {
        "name": "settings",
        "description": "Server settings",
        "options": [
            option("quota", type=2, options=[option("set", type=1, options=[option("n", 4)])])
        ],
    }
    assert validate_commands([animate, settings], is_global=True) == {}


async def test_deferred_command_followed_up_with_a_file(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server, image = fake_discord, png_bytes()

    handle = await server.interaction(
        "echo", {"text": "your clip"}, attachment=("cat.png", image, "image/png")
    )
    request = await server.next_followup_with_file()
    original = await handle.wait_original(lambda m: m.content == "done")

    assert handle.response_type == 5 and not original.loading and not original.ephemeral
    assert request.json["content"] == "your clip"
    assert [(f.filename, f.data) for f in request.files] == [("echo-cat.png", image)]
    # Sent while the answer was still "thinking", the followup became the original message;
    # editing the original's text afterwards kept the file.
    assert handle.followups == []
    [attachment] = original.attachments
    assert (attachment.content_type, attachment.width, attachment.height) == ("image/png", 16, 8)
    # The bot downloaded the user's upload from the fake CDN before answering.
    assert [r.kind for r in server.requests if r.kind in ("cdn", "callback")] == ["cdn", "callback"]
    async with aiohttp.ClientSession() as session, session.get(attachment.url) as response:
        assert response.status == 200 and await response.read() == image


async def test_attachment_urls_expire_like_discords_signed_links(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    upload = server.add_attachment("photo.jpg", b"jpeg bytes")
    assert upload.content_type == "image/jpeg" and "ex=" in upload.url

    assert await bot.http.get_from_cdn(upload.url) == b"jpeg bytes"
    server.clock.advance(24 * 3600)
    with pytest.raises(discord.NotFound):
        await bot.http.get_from_cdn(upload.url)


async def test_interaction_options_are_typed_by_the_synced_definition(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    with pytest.raises(ValueError, match="no option 'colour'"):
        await fake_discord.interaction("echo", {"colour": "red"}, attachment=b"\x89PNG")
    with pytest.raises(ValueError, match="requires options \\['image'\\]"):
        await fake_discord.interaction("echo", {"text": "no image"})


async def test_subcommand_with_member_role_and_integer_options(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    mods = server.add_role("Mods", discord.Permissions(manage_guild=True))
    mod = server.add_user("mod", roles=[mods])

    handle = await server.interaction(
        "settings",
        {"member": mod, "role": mods, "limit": 7},
        subcommand="quota set",
        permissions=discord.Permissions(manage_guild=True),
    )
    original = await handle.wait_original()

    assert original.content == "mod Mods 7 manage_guild=True" and original.ephemeral
    [group] = handle.payload["data"]["options"]
    assert (group["name"], group["type"], group["options"][0]["type"]) == ("quota", 2, 1)
    with pytest.raises(ValueError, match="above max_value"):
        await server.interaction(
            "settings", {"member": mod, "role": mods, "limit": 101}, subcommand="quota set"
        )


async def test_without_read_message_history_the_history_is_empty_and_a_fetch_refused(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    channel = bot.get_channel(fake_discord.channel.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("hello")
    fake_discord.deny_bot(discord.Permissions(read_message_history=True))
    assert [m async for m in channel.history(limit=10)] == []  # as Discord: empty, no error
    with pytest.raises(discord.Forbidden):
        await channel.fetch_message(sent.id)


async def test_a_deleted_channel_is_unknown_to_interaction_webhooks_too(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    await fake_discord.interaction("hold")
    interaction = await bot.next_held()
    await interaction.response.defer()
    fake_discord.delete_channel()
    with pytest.raises(discord.NotFound) as gone:
        await interaction.followup.send("still there?")
    assert gone.value.code == 10003


async def test_channel_message_send_reply_edit_fetch_delete(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    channel = bot.get_channel(server.channel.id)
    assert isinstance(channel, discord.TextChannel)

    first = await channel.send("progress 0%", file=discord.File(io.BytesIO(b"log"), "log.txt"))
    reply = await first.reply("a reply")
    await first.edit(content="progress 50%", attachments=[])
    fetched = await channel.fetch_message(first.id)

    assert server.message(reply.id).reference_id == first.id
    stored = server.message(first.id)
    assert (stored.content, stored.attachments, stored.edits) == ("progress 50%", (), 1)
    assert fetched.content == "progress 50%"
    await first.delete()
    with pytest.raises(discord.NotFound) as gone:
        await channel.fetch_message(first.id)
    assert gone.value.code == 10008 and server.message(first.id).deleted

    # Outside interactions the per-file limit is the guild's: 10 MiB below boost tier 2.
    too_big = discord.File(io.BytesIO(b"x" * (10 * 1024 * 1024 + 1)), "big.bin")
    with pytest.raises(discord.HTTPException) as caught:
        await channel.send(file=too_big)
    assert (caught.value.status, caught.value.code) == (413, 40005)


async def test_rate_limit_is_waited_out(bot: EchoBot, fake_discord: FakeDiscordServer) -> None:
    server = fake_discord
    fault = server.faults.rate_limit("POST", CHANNEL_MESSAGES, retry_after=0.3)
    channel = bot.get_channel(server.channel.id)
    assert isinstance(channel, discord.TextChannel)

    started = time.monotonic()
    message = await channel.send("hello")

    assert time.monotonic() - started >= 0.3
    assert [r.status for r in server.requests if r.kind == "channel_send"] == [429, 200]
    assert fault.fired == 1 and server.message(message.id).content == "hello"


async def test_server_error_is_retried(bot: EchoBot, fake_discord: FakeDiscordServer) -> None:
    server = fake_discord
    server.faults.server_error("POST", CHANNEL_MESSAGES, status=502)
    channel = bot.get_channel(server.channel.id)
    assert isinstance(channel, discord.TextChannel)

    message = await channel.send("after a hiccup")  # discord.py sleeps 1 s, then retries

    assert [r.status for r in server.requests if r.kind == "channel_send"] == [502, 200]
    assert [m.content for m in server.messages(server.channel)] == ["after a hiccup"]
    assert message.id == server.messages(server.channel)[0].id


async def test_token_expires_after_15_minutes_but_the_bot_token_still_works(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    await server.interaction("hold")
    interaction = await bot.next_held()
    await interaction.response.defer()

    server.clock.advance(15 * 60)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction.followup.send("too late")
    assert (caught.value.status, caught.value.code) == (401, 50027)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction.edit_original_response(content="too late")
    assert caught.value.code == 50027

    assert interaction.channel is not None
    fallback = await interaction.channel.send("posted in the channel instead")  # type: ignore[union-attr]
    assert server.message(fallback.id).content == "posted in the channel instead"


async def test_first_answer_later_than_3_seconds_is_unknown_interaction(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    await server.interaction("hold")
    interaction = await bot.next_held()

    server.clock.advance(3.5)
    with pytest.raises(discord.NotFound) as caught:
        await interaction.response.defer()
    assert caught.value.code == 10062

    server.enforce_first_answer_deadline = False
    handle = await server.interaction("hold")
    late = await bot.next_held()
    server.clock.advance(10)
    await late.response.send_message("late but allowed")
    assert handle.response_type == 4 and handle.original is not None
    assert handle.original.content == "late but allowed"


async def test_upload_over_the_interaction_limit_is_413(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    handle = await server.interaction("hold", attachment_size_limit=1024)
    interaction = await bot.next_held()
    assert interaction.filesize_limit == 1024
    await interaction.response.defer(ephemeral=True)

    with pytest.raises(discord.HTTPException) as caught:
        await interaction.followup.send(file=discord.File(io.BytesIO(b"x" * 1025), "big.bin"))
    assert (caught.value.status, caught.value.code) == (413, 40005)

    await interaction.followup.send(file=discord.File(io.BytesIO(b"x" * 1024), "fits.bin"))
    answer = await handle.next_message_with_file()
    assert answer.attachments[0].size == 1024
    # The first followup answered the ephemeral defer, so it is the (ephemeral) original; later
    # followups are messages of their own, public unless asked otherwise.
    assert handle.original == answer and answer.ephemeral
    await interaction.followup.send("for everyone")
    [public] = handle.followups
    assert public.content == "for everyone" and not public.ephemeral


async def test_dropped_gateway_is_resumed_and_missed_events_replayed(
    bot: EchoBot, fake_discord: FakeDiscordServer
) -> None:
    server = fake_discord
    identify = await server.wait_for_frame(2)

    assert await server.drop_gateway() == 1
    missed = await server.interaction("button")  # dispatched while the bot is away
    resume = await server.wait_for_frame(6)
    await asyncio.wait_for(bot.resumed.wait(), timeout=5)

    assert resume.path == RESUME_PATH
    assert resume.data["seq"] == 2  # READY and GUILD_CREATE seen; the interaction was not
    [session] = server.gateway.ready_sessions
    assert session.events[:4] == ["READY", "GUILD_CREATE", "INTERACTION_CREATE", "RESUMED"]
    original = await missed.wait_original()
    assert original.content == "not clicked"

    click = await server.click(original, "click-me")  # events after the resume still arrive
    assert await click.wait_response() == 7
    assert server.message(original.id).content == "clicked by tester"
    assert [f.index for f in server.recorder.frames if f.op == 2] == [identify.index]


async def test_message_rules_are_enforced(bot: EchoBot, fake_discord: FakeDiscordServer) -> None:
    server = fake_discord
    channel = bot.get_channel(server.channel.id)
    assert isinstance(channel, discord.TextChannel)

    with pytest.raises(discord.HTTPException) as caught:
        await channel.send("x" * 2001)
    assert (caught.value.status, caught.value.code) == (400, 50035)
    assert "In content: Must be 2000 or fewer in length." in caught.value.text

    # discord.py's View stops at 5 rows itself, so send the raw payload a buggy bot could send.
    row = {"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": "c"}]}
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel.id)
    with pytest.raises(discord.HTTPException) as caught:
        await bot.http.request(route, json={"content": "six rows", "components": [row] * 6})
    assert caught.value.code == 50035 and "components" in caught.value.text
    assert server.messages(server.channel) == []


# A bot configured only through the environment, as `python -m bot` is.
SUBPROCESS_BOT = """
import os, discord, yarl
discord.http.Route.BASE = os.environ["DISCORD_API_URL"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
client = discord.Client(intents=discord.Intents.default())
tree = discord.app_commands.CommandTree(client)

@tree.command(description="Answer pong")
async def ping(interaction):
    await interaction.response.send_message("pong")

client.run(os.environ["DISCORD_TOKEN"], log_handler=None)
"""


async def test_a_bot_in_another_process_finds_the_fake_through_its_environment(
    discord_server: FakeDiscordServer,
) -> None:
    async with running_bot_process(discord_server, [sys.executable, "-c", SUBPROCESS_BOT]):
        handle = await discord_server.interaction("ping")
        original = await handle.wait_original()
    assert original.content == "pong"

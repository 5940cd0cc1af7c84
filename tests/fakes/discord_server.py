"""A fake Discord on 127.0.0.1 for end-to-end tests of the real, unmodified discord.py client.

    async with FakeDiscordServer() as server:   # or the `discord_server` fixture
        # start the bot with DISCORD_API_URL=server.api_url, DISCORD_GATEWAY_URL=server.gateway_url
        handle = await server.interaction("animate", {"motion": 127}, attachment=("cat.png", png))
        assert await handle.wait_response() == 5                # deferred
        clip = await handle.next_message_with_file(timeout=30)  # original or followup
        await server.click(clip, "svd:reroll:42")

It starts with one guild (`server.guild`) holding a #general text channel (`server.channel`), the
bot's member and role, and a human member (`server.user`); add more with `add_guild`,
`add_user`, `add_role`, `guild.add_channel`. Everything the bot sent is in `server.requests`
(see `wait_for`, `next_request`); messages as they are now in `server.message(id)`.

Faults: `server.faults.rate_limit(...)`, `.server_error(...)`, `.add(method, path, status, body)`;
`server.clock.advance(15 * 60)` expires interaction tokens (401 / 50027) and a first answer
later than 3 s gets 404 / 10062 (`enforce_first_answer_deadline`); uploads above the
interaction's `attachment_size_limit` (channel messages: the guild's) get 413 / 40005;
`await server.drop_gateway()` makes the bot RESUME.
"""

# Waits take a `timeout` so that running out of time fails the test with a dump of what the
# bot did instead, rather than a bare TimeoutError from an outer asyncio.timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import discord
from aiohttp import web

from tests.fakes.discord_faults import Faults
from tests.fakes.discord_gateway import GATEWAY_PATH, RESUME_PATH, Gateway
from tests.fakes.discord_interactions import (
    AttachmentSpec,
    InteractionBuilder,
    InteractionHandle,
)
from tests.fakes.discord_models import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    UploadedFile,
    permission_value,
)
from tests.fakes.discord_payloads import channel_payload, member_payload, role_payload
from tests.fakes.discord_recorder import GatewayFrame, Predicate, RecordedRequest, Recorder
from tests.fakes.discord_rest import RestApi
from tests.fakes.discord_time import FakeClock, Snowflakes
from tests.fakes.discord_world import COMMAND, COMPONENT, MODAL_SUBMIT, DiscordWorld

# Large enough for any upload Discord could accept (100 MiB at boost tier 3), so that the
# fake, not aiohttp, decides what is too large.
MAX_REQUEST_BYTES = 120 * 1024 * 1024


class FakeDiscordServer:
    def __init__(
        self,
        *,
        bot_token: str = "fake-bot-token",
        guild_name: str = "Test Guild",
        premium_tier: int = 0,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self.clock = FakeClock()
        self.recorder = Recorder()
        self.faults = Faults()
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self.world = DiscordWorld(
            clock=self.clock,
            snowflakes=Snowflakes(self.clock),
            bot_token=bot_token,
            base_url=lambda: self.base_url,
        )
        self.gateway = Gateway(
            self.world, self.recorder, lambda: self.ws_base_url, heartbeat_interval_ms
        )
        self.world.emit = self.gateway.dispatch
        self.rest = RestApi(self.world, self.recorder, self.faults, lambda: self.gateway_url)
        self._builder = InteractionBuilder(self.world)
        self.guild = self.world.add_guild(guild_name, premium_tier=premium_tier)
        self.channel = self.guild.add_channel("general")
        self.user = self.add_user("tester")

    # Life

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get(GATEWAY_PATH, self.gateway.handle)
        app.router.add_get(RESUME_PATH, self.gateway.handle)
        app.router.add_route("*", "/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscordServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Where it is

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake Discord server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What discord.py's `Route.BASE` (the bot's DISCORD_API_URL) must be."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What `DiscordWebSocket.DEFAULT_GATEWAY` (the bot's DISCORD_GATEWAY_URL) must be."""
        return f"{self.ws_base_url}{GATEWAY_PATH}"

    def env(self) -> dict[str, str]:
        """Environment for running the bot as a subprocess against this server."""
        return {
            "DISCORD_TOKEN": self.bot_token,
            "DISCORD_API_URL": self.api_url,
            "DISCORD_GATEWAY_URL": self.gateway_url,
        }

    # Who is there

    @property
    def bot_token(self) -> str:
        return self.world.bot_token

    @property
    def application_id(self) -> int:
        return self.world.application_id

    @property
    def bot_user(self) -> FakeUser:
        return self.world.bot_user

    @property
    def enforce_first_answer_deadline(self) -> bool:
        """Whether a first answer later than 3 s (by `clock`) gets 404 / 10062."""
        return self.world.enforce_first_answer_deadline

    @enforce_first_answer_deadline.setter
    def enforce_first_answer_deadline(self, value: bool) -> None:
        self.world.enforce_first_answer_deadline = value

    def add_guild(self, name: str, *, premium_tier: int = 0) -> FakeGuild:
        """A guild with a #general channel, the bot and the owner as members. Add it before the
        bot connects (GUILD_CREATE is sent at IDENTIFY)."""
        guild = self.world.add_guild(name, premium_tier=premium_tier)
        guild.add_channel("general")
        return guild

    def add_user(
        self,
        username: str,
        *,
        guild: FakeGuild | None = None,
        roles: Iterable[FakeRole | int] = (),
        bot: bool = False,
    ) -> FakeUser:
        """A user who is a member of `guild` (default: the main guild). Added after the bot
        connected, it also reaches the bot as GUILD_MEMBER_ADD (with the members intent)."""
        user = self.world.add_user(username, bot=bot)
        target = guild or self.guild
        member = target.add_member(user, roles=roles)
        self.gateway.dispatch(
            "GUILD_MEMBER_ADD", member_payload(member) | {"guild_id": str(target.id)}
        )
        return user

    def add_role(
        self,
        name: str,
        permissions: int | discord.Permissions = 0,
        *,
        guild: FakeGuild | None = None,
    ) -> FakeRole:
        """A role in `guild` (default: the main guild); GUILD_ROLE_CREATE if the bot is there."""
        target = guild or self.guild
        role = target.add_role(name, permissions)
        self.gateway.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(target.id), "role": role_payload(role)}
        )
        return role

    def deny_bot(
        self, permissions: int | discord.Permissions, channel: FakeChannel | None = None
    ) -> None:
        """A channel overwrite (default: the main channel) that denies the bot `permissions`."""
        target = channel or self.channel
        self.world.bot_denied_in[target.id] = permission_value(permissions)

    def add_thread(self, name: str, parent: FakeChannel | None = None) -> FakeChannel:
        """A public thread under `parent` (default: the main channel), started by the member."""
        target = parent or self.channel
        guild = self.world.guilds[target.guild_id or 0]
        thread = guild.add_channel(name, type=11, parent_id=target.id, owner_id=self.user.id)
        self.gateway.dispatch("THREAD_CREATE", channel_payload(thread) | {"newly_created": True})
        return thread

    def delete_channel(self, channel: FakeChannel | None = None) -> None:
        """Delete a channel (default: the main one): from now on it answers 10003 Unknown
        Channel, to the bot's token and to interaction webhooks alike."""
        target = channel or self.channel
        for guild in self.world.guilds.values():
            if guild.channels.pop(target.id, None) is not None:
                self.gateway.dispatch(
                    "CHANNEL_DELETE",
                    {"id": str(target.id), "guild_id": str(guild.id), "type": target.type},
                )

    def close_dms(self, user: FakeUser) -> None:
        """`user` takes no direct messages from the bot: sending one answers 50007."""
        self.world.closed_dms.add(user.id)

    def dms(self, user: FakeUser) -> list[FakeMessage]:
        """The messages in the bot's DM channel with `user`."""
        return self.world.messages.in_channel(self.world.dm_channel(user.id).id)

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str = "",
        *,
        channel: FakeChannel | None = None,
    ) -> FakeAttachment:
        """A file a user uploaded, served by the fake CDN at `attachment.url`."""
        return self._builder.upload((filename, data, content_type), (channel or self.channel).id)

    # What is there

    def message(self, message_id: int) -> FakeMessage:
        """The current state of a message (deleted ones included, with `deleted=True`)."""
        found = self.world.messages.get(message_id)
        if found is None:
            raise KeyError(f"no message {message_id}")
        return found

    def messages(self, channel: FakeChannel | int | None = None) -> list[FakeMessage]:
        """Messages not deleted, oldest first, in `channel` (default: in every channel)."""
        if channel is None:
            return [m for m in self.world.messages.all() if not m.deleted]
        channel_id = channel.id if isinstance(channel, FakeChannel) else channel
        return self.world.messages.in_channel(channel_id)

    def commands(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """The commands as last synced (globally, or for `guild`)."""
        if guild is None:
            return list(self.world.global_commands)
        return list(self.world.guild_commands.get(guild.id, []))

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.recorder.requests

    # Waiting for the bot

    async def wait_for(
        self, predicate: Predicate, timeout: float = 5.0, what: str = "a request"
    ) -> RecordedRequest:
        """The first request matching `predicate` that no earlier `wait_for` returned."""
        return await self.recorder.wait_for(predicate, timeout, what)

    async def wait_for_frame(self, op: int, timeout: float = 5.0) -> GatewayFrame:
        """The next gateway frame with opcode `op` the bot sent (1 heartbeat, 2 identify,
        6 resume, 8 request members)."""
        return await self.recorder.wait_for_frame(lambda f: f.op == op, timeout, f"gateway op {op}")

    async def next_followup_with_file(self, timeout: float = 5.0) -> RecordedRequest:
        return await self.wait_for(
            lambda r: r.kind == "followup" and r.ok and bool(r.files),
            timeout,
            "a followup with a file",
        )

    async def next_request(self, kind: str, timeout: float = 5.0) -> RecordedRequest:
        """The next request answered by the route `kind` ("callback", "followup",
        "edit_original", "webhook_edit", "channel_send", "channel_edit", "sync_commands"...)."""
        return await self.wait_for(lambda r: r.kind == kind, timeout, f"a {kind!r} request")

    async def wait_until_connected(self, timeout: float = 5.0) -> None:
        """Until a bot has identified on the gateway (READY sent)."""
        await self.recorder.wait_until(
            lambda: bool(self.gateway.ready_sessions), timeout, "a bot to IDENTIFY"
        )

    # Acting as Discord and its users

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event (e.g. "GUILD_MEMBER_ADD") to the connected bot."""
        await self.wait_until_connected()
        self.gateway.dispatch(event, data)

    async def drop_gateway(self, code: int = 4000) -> int:
        """Drop the bot's websocket; it must RESUME (op 6) at the resume URL. Events dispatched
        before it does are replayed then."""
        return await self.gateway.drop(code)

    async def interaction(
        self,
        command: str,
        options: Mapping[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        user: FakeUser | FakeMember | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        attachment: AttachmentSpec | None = None,
        permissions: int | discord.Permissions | None = None,
        roles: Iterable[FakeRole | int] | None = None,
        locale: str = "en-US",
        attachment_size_limit: int | None = None,
        app_permissions: int | discord.Permissions | None = None,
        dm: bool = False,
    ) -> InteractionHandle:
        """A user runs `/command` (`subcommand="set"` or `"group set"` for nested ones).

        Options are typed from the synced definition; `attachment=` fills the command's single
        attachment option. `permissions` overrides the member's resolved permissions (default:
        from their roles, or from `roles` if given); `dm=True` runs it in a DM with the bot.
        """
        guild = None if dm else (guild or self.guild)
        person = user.user if isinstance(user, FakeMember) else (user or self.user)
        channel = channel or (
            self.world.dm_channel(person.id) if guild is None else self._first_channel(guild)
        )
        path = subcommand.split() if subcommand else []
        definition = self.world.find_command(command, guild.id if guild else None)
        values = dict(options or {})
        if attachment is not None:
            values[self._builder.attachment_option_name(definition, path)] = attachment
        resolved: dict[str, dict[str, Any]] = {}
        typed = self._builder.command_options(
            definition, command, path, values, resolved, guild.id if guild else None, channel.id
        )
        limit = attachment_size_limit or self.world.upload_limit(guild.id if guild else None)
        data: dict[str, Any] = {"type": 1, "options": typed}
        if resolved:
            data["resolved"] = resolved
        return await self._send_command(
            data,
            command,
            definition,
            person=person,
            guild=guild,
            channel=channel,
            limit=limit,
            permissions=None if permissions is None else permission_value(permissions),
            role_ids=None
            if roles is None
            else [r.id if isinstance(r, FakeRole) else int(r) for r in roles],
            locale=locale,
            app_permissions=None if app_permissions is None else permission_value(app_permissions),
        )

    def post(
        self,
        content: str = "",
        *,
        user: FakeUser | None = None,
        channel: FakeChannel | None = None,
        attachments: Iterable[tuple[str, bytes, str]] = (),
        linked_picture: tuple[str, bytes, str] | None = None,
        spoiler_link: bool = False,
    ) -> FakeMessage:
        """A user posts a message (with files: (name, bytes, content type)) in the channel, as
        the Discord client does. `linked_picture` (name, bytes, type): the message links a
        picture elsewhere, which Discord unfurls into an `image` embed whose proxy address the
        fake's media proxy serves (`spoiler_link`: posted inside ||spoiler bars||). Not
        dispatched: the bot reads no messages."""
        where = channel or self.channel
        files = [
            UploadedFile(form_field=f"files[{index}]", filename=name, data=data, content_type=kind)
            for index, (name, data, kind) in enumerate(attachments)
        ]
        if linked_picture is not None:
            link = f"https://pictures.example/{linked_picture[0]}"
            shown = f"||{link}||" if spoiler_link else link
            content = f"{content} {shown}".strip()
        message = self.world.messages.create(
            channel_id=where.id,
            guild_id=where.guild_id,
            author_id=(user or self.user).id,
            body={"content": content},
            files=files,
        )
        if linked_picture is None:
            return message
        # Discord's copy of the linked file, on its media proxy (the fake serves it at the
        # attachment's proxy address); the link itself points nowhere the bot may fetch.
        copy = self._builder.upload(linked_picture, where.id)
        media = {"url": link, "proxy_url": copy.proxy_url, "width": copy.width or 0}
        media["height"] = copy.height or 0
        return self.world.messages.unfurl(
            message.id, {"type": "image", "url": link, "thumbnail": media}
        )

    def forward(
        self,
        message: FakeMessage,
        *,
        user: FakeUser | None = None,
        channel: FakeChannel | None = None,
    ) -> FakeMessage:
        """A user forwards `message` (Apps → Forward) to `channel`: Discord posts a message with
        the original's content, files and embeds in its `message_snapshots`, none of its own."""
        original = self.world.message_json(message)
        forwarded = ("type", "content", "embeds", "attachments", "timestamp", "edited_timestamp")
        snapshot = {key: original[key] for key in (*forwarded, "flags", "components")}
        return self.world.messages.forward(
            message,
            snapshot,
            channel_id=(channel or self.channel).id,
            author_id=(user or self.user).id,
        )

    async def message_command(
        self,
        name: str,
        message: FakeMessage,
        *,
        user: FakeUser | None = None,
        permissions: int | discord.Permissions | None = None,
    ) -> InteractionHandle:
        """A user picks Apps → `name` on `message` (a message context-menu command)."""
        guild = self.world.guilds.get(message.guild_id or 0)
        person = user or self.user
        channel = self.world.channel(message.channel_id)
        definition = self.world.find_command(name, guild.id if guild else None, kind=3)
        limit = self.world.upload_limit(guild.id if guild else None)
        data: dict[str, Any] = {
            "type": 3,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): self.world.message_json(message)}},
        }
        return await self._send_command(
            data,
            name,
            definition,
            person=person,
            guild=guild,
            channel=channel,
            limit=limit,
            permissions=None if permissions is None else permission_value(permissions),
        )

    async def _send_command(
        self,
        data: dict[str, Any],
        name: str,
        definition: dict[str, Any] | None,
        *,
        person: FakeUser,
        guild: FakeGuild | None,
        channel: FakeChannel,
        limit: int,
        permissions: int | None = None,
        role_ids: list[int] | None = None,
        locale: str = "en-US",
        app_permissions: int | None = None,
    ) -> InteractionHandle:
        """Send an application command interaction: `data` gets the synced command's id (a new
        one for a command never synced) and, for a guild command, its guild."""
        payload = self._builder.base_payload(
            COMMAND,
            user=person,
            guild_id=guild.id if guild else None,
            channel=channel,
            permissions=permissions,
            role_ids=role_ids,
            locale=locale,
            attachment_size_limit=limit,
            app_permissions=app_permissions,
        )
        data = {
            "id": definition["id"] if definition else str(self.world.snowflakes.next()),
            "name": name,
            **data,
        }
        if definition is not None and "guild_id" in definition:
            data["guild_id"] = definition["guild_id"]
        payload["data"] = data
        return await self._send_interaction(
            payload,
            type=COMMAND,
            user=person,
            guild_id=guild.id if guild else None,
            channel_id=channel.id,
            attachment_size_limit=limit,
            command_name=name,
        )

    async def click(
        self,
        message: FakeMessage | int,
        custom_id: str,
        *,
        user: FakeUser | None = None,
        values: Iterable[str] | None = None,
    ) -> InteractionHandle:
        """A user clicks the button (or picks `values` in the select) `custom_id` on `message`."""
        current = self.message(message if isinstance(message, int) else message.id)
        component = current.component(custom_id)
        if current.deleted or component is None:
            raise ValueError(
                f"message {current.id} shows no component {custom_id!r}: {current.custom_ids}"
            )
        if component.get("disabled"):
            raise ValueError(f"{custom_id!r} is disabled: a user cannot click it")
        person = user or self.user
        if current.ephemeral:
            origin = self.world.interactions.get(current.interaction_id or 0)
            if origin is not None and origin.user.id != person.id:
                raise ValueError("only the user who ran the command sees this ephemeral message")
        channel = self.world.channel(current.channel_id)
        limit = self.world.upload_limit(current.guild_id)
        payload = self._builder.base_payload(
            COMPONENT,
            user=person,
            guild_id=current.guild_id,
            channel=channel,
            permissions=None,
            role_ids=None,
            locale="en-US",
            attachment_size_limit=limit,
            app_permissions=None,
        )
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None or component["type"] != 2:
            data["values"] = list(values or [])
        payload["data"] = data
        payload["message"] = self.world.message_json(current)
        return await self._send_interaction(
            payload,
            type=COMPONENT,
            user=person,
            guild_id=current.guild_id,
            channel_id=channel.id,
            attachment_size_limit=limit,
            source_message_id=current.id,
        )

    async def submit_modal(
        self,
        shown_by: InteractionHandle,
        values: Mapping[str, Any],
        *,
        user: FakeUser | None = None,
    ) -> InteractionHandle:
        """The user fills in and submits the modal the bot answered `shown_by` with."""
        modal = shown_by.modal
        if modal is None:
            raise ValueError(f"the bot answered {shown_by!r} without a modal")
        origin = self.world.interactions[shown_by.id]
        person = user or origin.user
        channel = self.world.channel(origin.channel_id)
        payload = self._builder.base_payload(
            MODAL_SUBMIT,
            user=person,
            guild_id=origin.guild_id,
            channel=channel,
            permissions=None,
            role_ids=None,
            locale="en-US",
            attachment_size_limit=origin.attachment_size_limit,
            app_permissions=None,
        )
        payload["data"] = {
            "custom_id": modal["custom_id"],
            "components": self._builder.modal_components(modal.get("components") or [], values),
        }
        if origin.source_message_id is not None:
            payload["message"] = self.world.message_json(self.message(origin.source_message_id))
        return await self._send_interaction(
            payload,
            type=MODAL_SUBMIT,
            user=person,
            guild_id=origin.guild_id,
            channel_id=channel.id,
            attachment_size_limit=origin.attachment_size_limit,
            source_message_id=origin.source_message_id,
        )

    def _first_channel(self, guild: FakeGuild) -> FakeChannel:
        return next(c for c in guild.channels.values() if c.type == 0)

    async def _send_interaction(self, payload: dict[str, Any], **fields: Any) -> InteractionHandle:
        await self.wait_until_connected()
        record = self.world.new_interaction(payload=payload, **fields)
        payload.update(id=str(record.id), token=record.token)
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        # Let the frame go out before the test starts measuring what the bot did.
        await asyncio.sleep(0)
        return InteractionHandle(record, self.world, self.recorder)

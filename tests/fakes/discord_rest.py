"""The fake REST API and CDN: parse, apply injected faults, route, answer, record.

One catch-all aiohttp handler does the plumbing so that every request (unknown routes and
faulted ones included) is recorded the same way; routes are small functions over the world.
Every JSON answer carries `Content-Type: application/json` exactly: discord.py treats
`application/json; charset=utf-8` as text and fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, hdrs, web

from tests.fakes import discord_errors as errors
from tests.fakes.discord_errors import DiscordHTTPError
from tests.fakes.discord_faults import DISCONNECT, Faults
from tests.fakes.discord_models import FakeGuild, FakeMessage, UploadedFile
from tests.fakes.discord_payloads import (
    application_payload,
    channel_payload,
    guild_create_payload,
    member_payload,
    user_payload,
)
from tests.fakes.discord_recorder import RecordedRequest, Recorder
from tests.fakes.discord_time import iso
from tests.fakes.discord_world import DiscordWorld

API_PREFIX = re.compile(r"^/api(?:/v\d+)?")
CDN_PATH = re.compile(r"^/(?:cdn|media)/attachments/(\d+)/(\d+)/([^/]+)$")


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    files: tuple[UploadedFile, ...]


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any = None


Handler = Callable[..., ApiResponse]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    kind: str
    handler: Handler
    bot_auth: bool


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true"}


async def _parse_body(request: web.Request) -> tuple[Any, tuple[UploadedFile, ...]]:
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        fields: dict[str, Any] = {}
        files: list[UploadedFile] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is not None:
                data = await part.read(decode=False)
                content_type = part.headers.get(hdrs.CONTENT_TYPE, "")
                files.append(
                    UploadedFile(part.name or "", part.filename, bytes(data), content_type)
                )
            elif part.name == "payload_json":
                try:
                    payload = json.loads(await part.text())
                except ValueError:
                    raise errors.bad_json() from None
            elif part.name:
                fields[part.name] = await part.text()
        if payload is None and fields:
            payload = fields
        return payload, tuple(files)
    if not request.body_exists:
        return None, ()
    text = await request.text()
    if not text:
        return None, ()
    try:
        return json.loads(text), ()
    except ValueError:
        raise errors.bad_json() from None


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if body is None and status == 204:
        return web.Response(status=204, headers=headers)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


class RestApi:
    def __init__(
        self,
        world: DiscordWorld,
        recorder: Recorder,
        faults: Faults,
        gateway_url: Callable[[], str],
    ) -> None:
        self._world = world
        self._recorder = recorder
        self._faults = faults
        self._gateway_url = gateway_url
        self._routes: list[Route] = []
        self._add_routes()

    def _route(
        self, method: str, pattern: str, kind: str, handler: Handler, bot_auth: bool = True
    ) -> None:
        self._routes.append(Route(method, re.compile(f"^{pattern}$"), kind, handler, bot_auth))

    def _add_routes(self) -> None:
        r = self._route
        app, token = r"(?P<app>\d+)", r"(?P<token>[^/]+)"
        guild, user = r"(?P<guild>\d+)", r"(?P<user>\d+)"
        r("GET", "/users/@me", "me", lambda q: ApiResponse(200, self._me()))
        r("GET", f"/users/{user}", "user", self._get_user)
        r("POST", "/users/@me/channels", "dm_create", self._create_dm)
        r("GET", "/oauth2/applications/@me", "application", self._application)
        r("GET", "/applications/@me", "application", self._application)
        r("GET", "/gateway", "gateway", self._gateway, bot_auth=False)
        r("GET", "/gateway/bot", "gateway", self._gateway)
        r("PUT", f"/applications/{app}/commands", "sync_commands", self._sync)
        r("GET", f"/applications/{app}/commands", "get_commands", self._commands)
        r("PUT", f"/applications/{app}/guilds/{guild}/commands", "sync_commands", self._sync)
        r("GET", f"/applications/{app}/guilds/{guild}/commands", "get_commands", self._commands)
        r(
            "POST",
            f"/interactions/(?P<interaction>\\d+)/{token}/callback",
            "callback",
            self._callback,
            False,
        )
        r("POST", f"/webhooks/{app}/{token}", "followup", self._followup, False)
        ref = r"(?P<ref>@original|\d+)"
        r("GET", f"/webhooks/{app}/{token}/messages/{ref}", "webhook_get", self._webhook_get, False)
        r(
            "PATCH",
            f"/webhooks/{app}/{token}/messages/{ref}",
            "webhook_edit",
            self._webhook_edit,
            False,
        )
        r(
            "DELETE",
            f"/webhooks/{app}/{token}/messages/{ref}",
            "webhook_delete",
            self._webhook_delete,
            False,
        )
        channel, message = r"(?P<channel>\d+)", r"(?P<message>\d+)"
        r("POST", f"/channels/{channel}/messages", "channel_send", self._channel_send)
        r("GET", f"/channels/{channel}/messages", "channel_history", self._channel_history)
        r(
            "GET",
            f"/channels/{channel}/messages/{message}",
            "channel_message",
            self._channel_message,
        )
        r("PATCH", f"/channels/{channel}/messages/{message}", "channel_edit", self._channel_edit)
        r(
            "DELETE",
            f"/channels/{channel}/messages/{message}",
            "channel_delete",
            self._channel_delete,
        )
        r("POST", f"/channels/{channel}/typing", "typing", self._typing)
        r("GET", f"/channels/{channel}", "channel", self._channel)
        r("GET", f"/guilds/{guild}", "guild", self._guild)
        r("GET", f"/guilds/{guild}/channels", "guild_channels", self._guild_channels)
        r("GET", f"/guilds/{guild}/members/{user}", "member", self._member)

    # Plumbing

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cdn = CDN_PATH.match(request.path)
        if cdn:
            return await self._cdn(request, *cdn.groups())
        path = API_PREFIX.sub("", request.path) or "/"
        index = self._recorder.next_index()
        kind = "unknown"
        params: dict[str, str] = {}
        payload: Any = None
        files: tuple[UploadedFile, ...] = ()
        fault = False
        headers: dict[str, str] = {}
        try:
            payload, files = await _parse_body(request)
            route, params = self._match(request.method, path)
            kind = route.kind
            if route.kind == "webhook_edit" and params.get("ref") == "@original":
                kind = "edit_original"
            injected = self._faults.take(request.method, path)
            if injected is None or injected.after_applying:
                if (
                    route.bot_auth
                    and request.headers.get("Authorization") != f"Bot {self._world.bot_token}"
                ):
                    raise errors.unauthorized()
                api_request = ApiRequest(
                    request.method, path, dict(request.query), dict(request.headers), payload, files
                )
                response = route.handler(api_request, **params)
            if injected is not None and injected.status == DISCONNECT:
                response, fault = ApiResponse(DISCONNECT, None), True
                await self._recorder.add_request(
                    _record(index, request, path, kind, payload, files, response, fault, params)
                )
                _hang_up(request)
            if injected is not None:
                fault = True
                response = ApiResponse(injected.status, injected.body)
                headers = injected.headers
        except DiscordHTTPError as error:
            response = ApiResponse(error.status, error.body())
            headers = error.headers
        await self._recorder.add_request(
            _record(index, request, path, kind, payload, files, response, fault, params)
        )
        return json_response(response.status, response.body, headers)

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in self._routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == method:
                return route, {k: unquote(v) for k, v in match.groupdict().items()}
            allowed = True
        raise errors.method_not_allowed() if allowed else errors.not_found_route()

    async def _cdn(
        self, request: web.Request, channel: str, attachment: str, name: str
    ) -> web.StreamResponse:
        path = request.path
        index = self._recorder.next_index()
        injected = self._faults.take(request.method, path)
        found = self._world.messages.cdn_get(
            int(attachment), unquote(name), request.query.get("ex", "")
        )
        if injected is not None and injected.status == DISCONNECT:
            status, body, headers, content_type = DISCONNECT, b"", {}, ""
        elif injected is not None:
            status, body, headers = (
                injected.status,
                json.dumps(injected.body).encode(),
                injected.headers,
            )
            content_type = "application/json"
        elif found is None or found.channel_id != int(channel) or request.method != "GET":
            status, body, headers = 404, b"This content is no longer available.", {}
            content_type = "text/plain"
        else:
            status, body, headers, content_type = 200, found.data, {}, found.content_type
        record = RecordedRequest(
            index=index,
            method=request.method,
            path=path,
            kind="cdn",
            query=dict(request.query),
            json=None,
            files=(),
            status=status,
            response=None,
            fault=injected is not None,
        )
        await self._recorder.add_request(record)
        if status == DISCONNECT:
            _hang_up(request)
        return web.Response(
            status=status, body=body, headers={**headers, "Content-Type": content_type}
        )

    def _message(self, message: FakeMessage) -> dict[str, Any]:
        return self._world.message_json(message)

    # Routes

    def _me(self) -> dict[str, Any]:
        return user_payload(self._world.bot_user) | {
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
            "locale": "en-US",
        }

    def _get_user(self, q: ApiRequest, user: str) -> ApiResponse:
        found = self._world.users.get(int(user))
        if found is None:
            raise errors.unknown_user()
        return ApiResponse(200, user_payload(found))

    def _create_dm(self, q: ApiRequest) -> ApiResponse:
        recipient = int((q.json or {}).get("recipient_id", 0))
        channel = self._world.dm_channel(recipient)
        return ApiResponse(200, channel_payload(channel, self._world.users[recipient]))

    def _application(self, q: ApiRequest) -> ApiResponse:
        world = self._world
        return ApiResponse(
            200, application_payload(world.application_id, world.bot_user.username, world.owner)
        )

    def _gateway(self, q: ApiRequest) -> ApiResponse:
        body: dict[str, Any] = {"url": self._gateway_url()}
        if q.path.endswith("/bot"):
            body["shards"] = 1
            body["session_start_limit"] = {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14400000,
                "max_concurrency": 1,
            }
        return ApiResponse(200, body)

    def _check_app(self, app: str) -> None:
        if int(app) != self._world.application_id:
            raise DiscordHTTPError(404, 10002, "Unknown Application")

    def _sync(self, q: ApiRequest, app: str, guild: str | None = None) -> ApiResponse:
        self._check_app(app)
        stored = self._world.sync_commands(q.json, int(guild) if guild else None)
        return ApiResponse(200, stored)

    def _commands(self, q: ApiRequest, app: str, guild: str | None = None) -> ApiResponse:
        self._check_app(app)
        if guild is None:
            return ApiResponse(200, self._world.global_commands)
        return ApiResponse(200, self._world.guild_commands.get(int(guild), []))

    def _callback(self, q: ApiRequest, interaction: str, token: str) -> ApiResponse:
        record, message = self._world.respond(int(interaction), token, q.json, q.files)
        if not _truthy(q.query.get("with_response")):
            return ApiResponse(204)
        answer: dict[str, Any] = {
            "id": str(record.id),
            "type": record.type,
            "response_message_loading": record.response_type == 5,
            "response_message_ephemeral": bool(message and message.ephemeral),
        }
        body: dict[str, Any] = {"interaction": answer}
        if message is not None:
            answer["response_message_id"] = str(message.id)
            body["resource"] = {"type": record.response_type, "message": self._message(message)}
        elif record.response_type is not None:
            body["resource"] = {"type": record.response_type}
        return ApiResponse(200, body)

    def _followup(self, q: ApiRequest, app: str, token: str) -> ApiResponse:
        message = self._world.followup(int(app), token, q.json, q.files)
        if not _truthy(q.query.get("wait")):
            return ApiResponse(204)
        return ApiResponse(200, self._message(message))

    def _webhook_get(self, q: ApiRequest, app: str, token: str, ref: str) -> ApiResponse:
        return ApiResponse(200, self._message(self._world.webhook_message(int(app), token, ref)))

    def _webhook_edit(self, q: ApiRequest, app: str, token: str, ref: str) -> ApiResponse:
        message = self._world.webhook_edit(int(app), token, ref, q.json, q.files)
        return ApiResponse(200, self._message(message))

    def _webhook_delete(self, q: ApiRequest, app: str, token: str, ref: str) -> ApiResponse:
        self._world.webhook_delete(int(app), token, ref)
        return ApiResponse(204)

    def _channel_send(self, q: ApiRequest, channel: str) -> ApiResponse:
        return ApiResponse(
            200, self._message(self._world.channel_send(int(channel), q.json, q.files))
        )

    def _channel_history(self, q: ApiRequest, channel: str) -> ApiResponse:
        limit = min(int(q.query.get("limit", 50)), 100)
        visible = self._world.channel_history(int(channel))
        newest_first = sorted(visible, key=lambda m: m.id, reverse=True)[:limit]
        return ApiResponse(200, [self._message(m) for m in newest_first])

    def _channel_message(self, q: ApiRequest, channel: str, message: str) -> ApiResponse:
        return ApiResponse(
            200, self._message(self._world.channel_message(int(channel), int(message)))
        )

    def _channel_edit(self, q: ApiRequest, channel: str, message: str) -> ApiResponse:
        edited = self._world.channel_edit(int(channel), int(message), q.json, q.files)
        return ApiResponse(200, self._message(edited))

    def _channel_delete(self, q: ApiRequest, channel: str, message: str) -> ApiResponse:
        self._world.channel_delete(int(channel), int(message))
        return ApiResponse(204)

    def _typing(self, q: ApiRequest, channel: str) -> ApiResponse:
        self._world.channel(int(channel))
        return ApiResponse(204)

    def _channel(self, q: ApiRequest, channel: str) -> ApiResponse:
        found = self._world.channel(int(channel))
        recipient = self._world.users.get(found.recipient_id or 0)
        return ApiResponse(200, channel_payload(found, recipient))

    def _guild_of(self, guild_id: str) -> FakeGuild:
        found = self._world.guilds.get(int(guild_id))
        if found is None:
            raise errors.unknown_guild()
        return found

    def _guild(self, q: ApiRequest, guild: str) -> ApiResponse:
        found = self._guild_of(guild)
        return ApiResponse(200, guild_create_payload(found, iso(self._world.clock.now())))

    def _guild_channels(self, q: ApiRequest, guild: str) -> ApiResponse:
        return ApiResponse(
            200, [channel_payload(c) for c in self._guild_of(guild).channels.values()]
        )

    def _member(self, q: ApiRequest, guild: str, user: str) -> ApiResponse:
        member = self._guild_of(guild).members.get(int(user))
        if member is None:
            raise errors.unknown_member()
        return ApiResponse(200, member_payload(member))


def _hang_up(request: web.Request) -> None:
    """Close the connection without an answer; aiohttp then drops the handler's response."""
    transport = request.transport
    if transport is not None:
        transport.close()
    raise ConnectionResetError("the fake hung up, as asked")


def _record(
    index: int,
    request: web.Request,
    path: str,
    kind: str,
    payload: Any,
    files: tuple[UploadedFile, ...],
    response: ApiResponse,
    fault: bool,
    params: dict[str, str],
) -> RecordedRequest:
    return RecordedRequest(
        index=index,
        method=request.method,
        path=path,
        kind=kind,
        query=dict(request.query),
        json=payload,
        files=files,
        status=response.status,
        response=response.body,
        fault=fault,
        interaction_id=int(params["interaction"]) if "interaction" in params else None,
        token=params.get("token"),
    )

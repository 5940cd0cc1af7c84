"""The fake gateway: HELLO, heartbeats, IDENTIFY → READY + GUILD_CREATE, RESUME with replay.

Each identified session keeps every event it was sent with its sequence number, so when a test
drops the connection, events dispatched meanwhile are replayed after the client's RESUME
(op 6, on `resume_gateway_url`), as Discord does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.discord_payloads import guild_create_payload, member_payload, user_payload
from tests.fakes.discord_recorder import Recorder
from tests.fakes.discord_time import iso
from tests.fakes.discord_world import DiscordWorld

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11

GUILD_MEMBERS_INTENT = 1 << 1
GUILD_MESSAGES_INTENT = 1 << 9
DIRECT_MESSAGES_INTENT = 1 << 12

GATEWAY_PATH = "/gateway"
RESUME_PATH = "/gateway-resume"


def _intent_for(event: str, data: dict[str, Any]) -> int:
    """The intent a client needs to receive `event` (0: always sent)."""
    if event.startswith("MESSAGE_"):
        return GUILD_MESSAGES_INTENT if "guild_id" in data else DIRECT_MESSAGES_INTENT
    if event.startswith("GUILD_MEMBER_"):
        return GUILD_MEMBERS_INTENT
    return 0


@dataclass(eq=False)  # compared and hashed by identity: one per websocket
class Connection:
    ws: web.WebSocketResponse
    path: str
    outbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


@dataclass
class Session:
    id: str
    intents: int
    shard: list[int] | None
    sequence: int = 0
    history: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, event, frame)
    connection: Connection | None = None
    invalid: bool = False

    @property
    def events(self) -> list[str]:
        """Every event dispatched to this session, in sequence order."""
        return [event for _, event, _ in self.history]

    def send(self, event: str, data: Any) -> None:
        self.sequence += 1
        frame = json.dumps({"op": DISPATCH, "t": event, "s": self.sequence, "d": data})
        self.history.append((self.sequence, event, frame))
        if self.connection is not None:
            self.connection.outbox.put_nowait(frame)


class Gateway:
    def __init__(
        self,
        world: DiscordWorld,
        recorder: Recorder,
        base_ws_url: Callable[[], str],
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self._world = world
        self._recorder = recorder
        self._base_ws_url = base_ws_url
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, Session] = {}
        self._connections: set[Connection] = set()

    # Test-facing

    @property
    def ready_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.invalid]

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send `event` to every live session that asked for it; a session that is between
        connections gets it on RESUME."""
        needed = _intent_for(event, data)
        for session in self.ready_sessions:
            if not needed or session.intents & needed:
                session.send(event, data)

    async def drop(self, code: int = 4000) -> int:
        """Close every connection as a failing Discord node would; sessions stay resumable.

        Returns how many connections were dropped."""
        connections = list(self._connections)
        for connection in connections:
            self._detach(connection)
            await connection.ws.close(code=code, message=b"dropped by the test")
        return len(connections)

    async def send_op(self, op: int, data: Any = None) -> None:
        """Send a raw opcode (e.g. 7 RECONNECT) on every open connection."""
        for connection in list(self._connections):
            connection.outbox.put_nowait(json.dumps({"op": op, "d": data}))

    def invalidate_sessions(self) -> None:
        """Forget every session: the next RESUME gets op 9 and the client must IDENTIFY."""
        for session in self.sessions.values():
            session.invalid = True

    async def close(self) -> None:
        for connection in list(self._connections):
            self._detach(connection)
            await connection.ws.close(code=1001, message=b"server shutting down")

    # The websocket

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        connection = Connection(ws=ws, path=request.path)
        self._connections.add(connection)
        writer = asyncio.create_task(self._write(connection))
        connection.outbox.put_nowait(
            json.dumps({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        )
        try:
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(message.data)
                await self._recorder.add_frame(frame.get("op", -1), frame.get("d"), request.path)
                await self._on_frame(connection, frame)
                # Waiters may wait on what the frame changed (a session after IDENTIFY).
                await self._recorder.changed()
        finally:
            self._detach(connection)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _write(self, connection: Connection) -> None:
        while True:
            frame = await connection.outbox.get()
            if connection.ws.closed:
                return
            try:
                await connection.ws.send_str(frame)
            except ConnectionError:
                return

    def _detach(self, connection: Connection) -> None:
        self._connections.discard(connection)
        for session in self.sessions.values():
            if session.connection is connection:
                session.connection = None

    async def _on_frame(self, connection: Connection, frame: dict[str, Any]) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op != HEARTBEAT and not isinstance(data, dict):
            return
        if op == HEARTBEAT:
            connection.outbox.put_nowait(json.dumps({"op": HEARTBEAT_ACK}))
        elif op == IDENTIFY and isinstance(data, dict):
            if data.get("token") != self._world.bot_token:
                await connection.ws.close(code=4004, message=b"Authentication failed.")
                return
            self._identify(connection, data)
        elif op == RESUME and isinstance(data, dict):
            self._resume(connection, data)
        elif op == REQUEST_MEMBERS and isinstance(data, dict):
            self._send_members(connection, data)

    def _identify(self, connection: Connection, data: dict[str, Any]) -> None:
        session = Session(
            id=secrets.token_hex(16), intents=int(data.get("intents", 0)), shard=data.get("shard")
        )
        self.sessions[session.id] = session
        session.connection = connection
        ready: dict[str, Any] = {
            "v": 10,
            "user": user_payload(self._world.bot_user) | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in self._world.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": f"{self._base_ws_url()}{RESUME_PATH}",
            "application": {"id": str(self._world.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        session.send("READY", ready)
        joined = iso(self._world.clock.now())
        for guild in self._world.guilds.values():
            session.send("GUILD_CREATE", guild_create_payload(guild, joined))

    def _resume(self, connection: Connection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or session.invalid or data.get("token") != self._world.bot_token:
            connection.outbox.put_nowait(json.dumps({"op": INVALID_SESSION, "d": False}))
            return
        session.connection = connection
        seen = int(data.get("seq") or 0)
        for sequence, _, frame in session.history:
            if sequence > seen:
                connection.outbox.put_nowait(frame)
        session.send("RESUMED", {})

    def _send_members(self, connection: Connection, data: dict[str, Any]) -> None:
        session = next((s for s in self.sessions.values() if s.connection is connection), None)
        if session is None:
            return
        guild_ids = data.get("guild_id")
        for guild_id in guild_ids if isinstance(guild_ids, list) else [guild_ids]:
            guild = self._world.guilds.get(int(guild_id or 0))
            if guild is None:
                continue
            chunk: dict[str, Any] = {
                "guild_id": str(guild.id),
                "members": [member_payload(m) for m in guild.members.values()],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce"):
                chunk["nonce"] = data["nonce"]
            session.send("GUILD_MEMBERS_CHUNK", chunk)

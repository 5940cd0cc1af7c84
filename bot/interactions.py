"""From a Discord interaction to the core's plain values, and the reply flow that /animate and the
clip buttons share: answer at once, queue, then post the public progress message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

import aiohttp
import discord

from bot import messages
from bot.service import Accepted, AnimateService, Member, Origin
from bot.views import cancel_view
from generation.jobs import EventKind

log = logging.getLogger(__name__)

# Discord's default per-file limit, used when an interaction does not say.
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# Discord forgets an interaction not answered within 3 s. A command's database work is quick, but
# SQLite may wait out its busy timeout behind another process's write, and every query waits
# behind that one: past this, the answer is deferred ("thinking…") and then put in its place.
DEFER_AFTER_SECONDS = 2.0


async def defer(interaction: discord.Interaction, **options: Any) -> None:
    """`interaction.response.defer`, taking "already acknowledged" (40060) for done: the
    deferral reached Discord though its answer was lost, and discord.py's retry of that 5xx was
    refused. The flow goes on; its answer replaces "thinking…" as after any deferral."""
    try:
        await interaction.response.defer(**options)
    except discord.HTTPException as exc:
        if exc.code != 40060:
            raise
        log.warning("a deferral landed but its reply was lost (40060); going on")


class TimelyReply:
    """A command's one ephemeral answer, sent at once when the work behind it is quick and in
    place of a deferral when it is not, so Discord's 3-second deadline is met either way.

        async with TimelyReply(interaction) as reply:
            ...  # database work
            await reply.send(text)

    An error raised inside reaches the error handler after any deferral has landed, so its
    message replaces "thinking…" rather than racing it.
    """

    def __init__(
        self, interaction: discord.Interaction, *, within: float = DEFER_AFTER_SECONDS
    ) -> None:
        self._interaction = interaction
        self._within = within
        self._timer: asyncio.TimerHandle | None = None
        self._deferring: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> TimelyReply:
        self._timer = asyncio.get_running_loop().call_later(self._within, self._defer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._settle()

    def _defer(self) -> None:
        if not self._interaction.response.is_done():
            self._deferring = asyncio.ensure_future(
                self._interaction.response.defer(ephemeral=True, thinking=True)
            )

    async def _settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._deferring is not None:
            try:
                await self._deferring
            except Exception as exc:  # the answer below tries again, or the error handler does
                log.warning("could not defer a slow answer: %s", type(exc).__name__)

    async def send(self, content: str, **fields: Any) -> None:
        await self._settle()
        if not self._interaction.response.is_done():
            try:
                await self._interaction.response.send_message(content, ephemeral=True, **fields)
                return
            except discord.HTTPException as exc:
                # 40060: the deferral reached Discord though its answer never came back.
                if exc.code != 40060:
                    raise
        await self._interaction.edit_original_response(content=content, **fields)


class NotInGuild(Exception):
    user_message = "I only make clips in servers, not in direct messages. Try me in a server!"


async def member_of(interaction: discord.Interaction, service: AnimateService) -> Member:
    """The member, with moderator rights checked now (server admins can change the defaults)."""
    if interaction.guild_id is None or not isinstance(interaction.user, discord.Member):
        raise NotInGuild()
    roles = role_ids(interaction.user)
    settings = await service.guild_settings(interaction.guild_id)
    moderator = interaction.permissions.manage_guild or (
        settings.moderator_role_id is not None and settings.moderator_role_id in roles
    )
    return Member(
        guild_id=interaction.guild_id,
        user_id=interaction.user.id,
        role_ids=roles,
        is_moderator=moderator,
    )


def role_ids(member: discord.Member) -> tuple[int, ...]:
    """The member's role ids, from the interaction itself. `Member.roles` looks each id up in
    discord.py's guild cache, which is empty for a server whose GUILD_CREATE has not arrived yet
    (just after a restart) or that is unavailable: role limits and the moderator role would
    silently not apply. discord.py keeps the payload's ids only in `_roles`."""
    ids = getattr(member, "_roles", None)
    if ids is None:
        ids = [role.id for role in member.roles]
    return tuple(int(i) for i in ids if int(i) != member.guild.id)


def _bot_can_post(interaction: discord.Interaction) -> bool:
    """Whether the bot may post clips in the channel with its own token, as it must once the
    interaction's token has expired (Discord sends the bot's permissions there with it)."""
    permissions = interaction.app_permissions
    if isinstance(interaction.channel, discord.Thread):
        send = permissions.send_messages_in_threads
    else:
        send = permissions.send_messages
    # Not Read Message History: clips are not replies, and a nonce (not a look at the channel)
    # keeps a retried upload from being posted twice.
    # View Channel: without it Discord denies the rest, whatever their bits say.
    return permissions.view_channel and send and permissions.attach_files


def origin_of(interaction: discord.Interaction) -> Origin:
    assert interaction.channel_id is not None
    limit = getattr(interaction, "filesize_limit", None) or DEFAULT_UPLOAD_LIMIT
    return Origin(
        channel_id=interaction.channel_id,
        max_bytes=int(limit),
        application_id=interaction.application_id,
        interaction_id=interaction.id,
        interaction_token=interaction.token,
    )


Submit = Callable[[Member, Origin], Awaitable[Accepted]]


async def queue_from_interaction(
    interaction: discord.Interaction, service: AnimateService, submit: Submit
) -> None:
    """Defer (ephemeral, so only the member sees problems), queue, then post the public progress
    message that everyone in the channel can follow.

    Errors with a `user_message` propagate to the tree's error handler, which answers ephemerally.
    """
    if not interaction.response.is_done():
        await defer(interaction, ephemeral=True, thinking=True)
    member = await member_of(interaction, service)
    accepted = await submit(member, origin_of(interaction))
    # The presenter holds the clip's outcome back until this flow has answered: sent first,
    # it would take the place of "thinking…", ephemeral, and the progress message posted after
    # it would stay for good.
    flows = _presenter(interaction)
    if flows is not None:
        flows.flow_began(accepted.job.job_id)
    # From here the clip is queued and will be made, whatever Discord answers now: an error must
    # not reach the error handler, whose "not charged, try again" would make it twice. Without a
    # progress message the presenter posts one itself, and the outcome comes either way.
    # Network errors (aiohttp's, a timeout) are not HTTPExceptions and must be caught alike.
    try:
        await _announce(interaction, service, accepted)
    except Exception as exc:
        log.warning(
            "queued, but Discord refused the announcement: %s",
            exc,
            extra={"job_id": accepted.job.job_id},
        )
    finally:
        if flows is not None:
            flows.flow_ended(accepted.job.job_id)


def _presenter(interaction: discord.Interaction) -> Any:
    """The bot's presenter (None for a client that has none: a test's bare one)."""
    return getattr(interaction.client, "presenter", None)


async def _announce(
    interaction: discord.Interaction, service: AnimateService, accepted: Accepted
) -> None:
    """The member's "Got it" and the channel's progress message."""
    queued = accepted.queued
    notes = list(accepted.notes)
    if not _bot_can_post(interaction):
        notes.append(messages.CANNOT_POST_HERE)
    note = "".join(f"\nℹ️ {n}" for n in notes)
    got_it = (
        messages.accepted_text(
            queued.position, queued.eta_seconds, accepted.quota, on_hold=accepted.on_hold
        )
        + note
    )
    try:
        await interaction.edit_original_response(content=got_it)
    except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
        # While "thinking…" stands, Discord puts the next followup in its place, ephemeral:
        # that would be the public progress message, or even the clip. An ephemeral followup
        # of the answer takes the place instead (or, had the edit landed, is a second copy
        # only the member sees).
        log.warning("the answer's edit failed (%s); sending it as a followup", exc)
        await interaction.followup.send(got_it, ephemeral=True, wait=True)
    # On hold, the public message says so from the start, not a place in a line that stands.
    first = replace(queued, kind=EventKind.STALLED) if accepted.on_hold else queued
    progress = await interaction.followup.send(
        messages.progress_text(accepted.job, first),
        view=cancel_view(accepted.job.job_id),
        allowed_mentions=discord.AllowedMentions.none(),
        wait=True,
    )
    await service.set_progress_message(accepted.job.job_id, progress.id)

"""Shows jobs in Discord: the public progress message, the finished clip, failures.

Interaction tokens die 15 minutes after the command, and a busy queue can be longer than that.
Every message is therefore sent or edited through the interaction's webhook while its token is
fresh, and through the channel with the bot token after that (or as soon as Discord answers 401 /
50027), replying to the original message and mentioning the member so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord

from bot import messages
from bot.views import cancel_view, clip_view
from generation.errors import DiskFull
from generation.jobs import JobEvent
from storage.jobs import JobRecord

log = logging.getLogger(__name__)

# Discord lets a token live 15 minutes; stop using it a little before, so an edit in flight
# does not race the expiry.
TOKEN_LIFETIME = timedelta(minutes=14)
INVALID_WEBHOOK_TOKEN = 50027
UNKNOWN_WEBHOOK = 10015
UNKNOWN_MESSAGE = 10008
# Rate limits are not published: one progress edit every few seconds per message is safe.
DEFAULT_EDIT_INTERVAL = 3.0
# How far back a retry looks for a clip Discord stored although it answered with an error.
RECENT_MESSAGES = 50
# The shortest wait of discord.py's webhook adapter before it sends a request again after a 5xx.
WEBHOOK_RETRY_WAIT = 1.0
# How long after the command its flow may still be posting the progress message.
PROGRESS_POST_GRACE = timedelta(seconds=30)
# How long an outcome waits for that flow (which normally takes well under a second) to be
# known, and, once it is, for it to end (Discord's 5xx answers, retried, take about 25 s).
COMMAND_FLOW_WAIT = timedelta(seconds=10)
COMMAND_FLOW_MAX = timedelta(seconds=40)
# How far the clock may step back (an NTP correction) and a job still count as just queued.
CLOCK_SLEW = timedelta(seconds=5)

# Re-encode a clip at `path` to fit `max_bytes`; returns the new file. Blocking.
Reencoder = Callable[[Path, int], Path]
# Below this a 413 is not worth another encode: the clip would be a smear.
MIN_REENCODE_BYTES = 64 * 1024
# What a DM (and a server without boosts) takes per file.
DM_UPLOAD_LIMIT = 10 * 1024 * 1024
# Discord's codes for a channel the clip cannot go to: deleted, or a thread archived or locked.
UNKNOWN_CHANNEL = 10003
THREAD_ARCHIVED = 50083
THREAD_LOCKED = 160005


def _nonce(job: JobRecord, *, dm: bool = False) -> str:
    # Discord allows 25 characters; a job id's first 24 hex digits are as unique as we need.
    return ("d" if dm else "c") + job.job_id[:24]


def _clip_file(job: JobRecord, path: Path) -> discord.File:
    """The clip as an upload, with alt text for members who use a screen reader."""
    return discord.File(
        path, filename=_clip_name(job, path), description=messages.clip_alt_text(job)
    )


def _clip_name(job: JobRecord, path: Path) -> str:
    # Discord blurs a file whose name starts with SPOILER_ until it is clicked.
    spoiler = "SPOILER_" if job.spoiler else ""
    return f"{spoiler}clip-{job.job_id[:8]}{path.suffix}"


def _not_postable_there(exc: discord.HTTPException) -> str | None:
    """Why the clip cannot go to its channel at all ("permissions", "gone", "archived"), as
    opposed to a refusal a later try may get past (a 5xx, a rate limit); None then."""
    if isinstance(exc, discord.Forbidden):
        return "permissions"
    if exc.code == UNKNOWN_CHANNEL:
        return "gone"
    if exc.code in (THREAD_ARCHIVED, THREAD_LOCKED):
        return "archived"
    return None


def _message_gone(exc: discord.HTTPException) -> bool:
    """Whether the progress message can no longer be edited at all: deleted (by a moderator,
    or with its channel), or the bot may no longer see its channel."""
    return isinstance(exc, discord.Forbidden) or exc.code in (UNKNOWN_MESSAGE, UNKNOWN_CHANNEL)


def _size(path: Path) -> int:
    return path.stat().st_size


def _only_the_member(job: JobRecord) -> discord.AllowedMentions:
    return discord.AllowedMentions(users=[discord.Object(job.user_id)], roles=False, everyone=False)


def _age(job: JobRecord) -> timedelta:
    """Since the command: what the interaction token's life is counted from."""
    if job.interaction_id is None:
        return TOKEN_LIFETIME
    return datetime.now(UTC) - discord.utils.snowflake_time(job.interaction_id)


def _since_queued(job: JobRecord) -> timedelta:
    """Since the job was recorded: the command's flow posts the progress message right after
    (the command itself may be much older: a large picture takes a while to fetch and check)."""
    if job.interaction_id is None:
        return TOKEN_LIFETIME  # no command flow: a resumed job, or one from a button long ago
    if job.created_at is None:
        return _age(job)
    since = datetime.now(UTC) - job.created_at
    # Well below zero after the clock was set back (a reboot before NTP): the flow is long over,
    # and waiting "until it is 10 s old" would hold up every member's messages for the jump. A
    # slew of a moment is just now.
    if since < -CLOCK_SLEW:
        return TOKEN_LIFETIME
    return max(since, timedelta(0))


@dataclass
class _Progress:
    text: str = ""
    shown: str = ""
    last_edit: float = float("-inf")
    flusher: asyncio.Task[None] | None = None
    finished: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscordPresenter:
    def __init__(
        self,
        client: discord.Client,
        *,
        reencode: Reencoder,
        set_progress_message: Callable[[str, int], Awaitable[None]],
        lookup: Callable[[str], Awaitable[JobRecord | None]],
        set_clip_message: Callable[[str, str], Awaitable[None]] | None = None,
        edit_interval: float = DEFAULT_EDIT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._reencode = reencode
        self._set_progress_message = set_progress_message
        self._set_clip_message = set_clip_message
        self._lookup = lookup
        self._interval = edit_interval
        self._clock = clock
        self._progress: dict[str, _Progress] = {}
        # Tokens Discord has told us are dead, so we stop trying them.
        self._dead_tokens: set[str] = set()
        # Jobs whose progress message was deleted (or its channel shut to the bot): not edited
        # again, since each refusal counts toward the invalid requests Discord bans a bot for.
        self._gone: set[str] = set()
        # Jobs whose command flow ("Got it", then the progress message) is still under way.
        self._flows: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------------ progress

    async def show(self, job: JobRecord, event: JobEvent) -> None:
        state = self._progress.setdefault(job.job_id, _Progress())
        if state.finished or job.job_id in self._gone:
            return
        state.text = messages.progress_text(job, event)
        if state.flusher is None or state.flusher.done():
            state.flusher = asyncio.create_task(self._flush(job, state))

    async def _flush(self, job: JobRecord, state: _Progress) -> None:
        """Edit at most once per interval, and only when the text changed; latest text wins."""
        while not state.finished and state.text != state.shown:
            wait = state.last_edit + self._interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            text = state.text
            async with state.lock:
                if state.finished:
                    return
                try:
                    shown = await self._edit_progress(job, text)
                except discord.HTTPException as exc:
                    log.warning("progress edit failed: %s", exc, extra={"job_id": job.job_id})
                    if _message_gone(exc):
                        self._gone.add(job.job_id)
                        return
                    shown = True
                if shown:
                    state.shown = text
                state.last_edit = self._clock()

    async def _edit_progress(self, job: JobRecord, text: str) -> bool:
        """Show `text` on the job's progress message; False when it has none yet."""
        current = await self._current(job)
        if current.progress_message_id is None:
            if _since_queued(current) < PROGRESS_POST_GRACE:
                # The command's own flow is posting the progress message right now: wait for it
                # rather than post a second one.
                return False
            # A job resumed after a restart whose progress message was never posted.
            # Without a ping, as the command's own progress message: only the outcome pings.
            message = await self._send(
                current, text, view=cancel_view(job.job_id), mentions=discord.AllowedMentions.none()
            )
            await self._set_progress_message(job.job_id, message.id)
            return True
        await self._edit(current, current.progress_message_id, text)
        return True

    async def _current(self, job: JobRecord) -> JobRecord:
        # The progress message id may have been stored after this record was read.
        return await self._lookup(job.job_id) or job

    async def _stop_progress(self, job: JobRecord) -> JobRecord:
        """Stop the throttled progress edits (one in flight ends first); the current record."""
        state = self._progress.setdefault(job.job_id, _Progress())
        state.finished = True
        async with state.lock:
            pass
        if state.flusher is not None and not state.flusher.done():
            state.flusher.cancel()
        self._progress.pop(job.job_id, None)
        return await self._current(job)

    async def _finish_progress(self, job: JobRecord, final: str | None = None) -> bool:
        """Stop progress edits, then remove the progress message (the result replaces it) or,
        with `final`, turn it into that text without buttons. True when that edit was made."""
        current = await self._stop_progress(job)
        if current.progress_message_id is None or job.job_id in self._gone:
            self._gone.discard(job.job_id)
            return False
        try:
            if final is None:
                await self._delete(current, current.progress_message_id)
                return False
            await self._edit(current, current.progress_message_id, final, buttons=False)
            return True
        except discord.HTTPException as exc:
            log.info("could not finish the progress message: %s", exc, extra={"job_id": job.job_id})
            return False

    async def interrupted(self, job: JobRecord, event: JobEvent) -> None:
        """The bot is shutting down: say so on the progress message at once (not throttled: the
        bot closes next). Its Cancel button stays; it works again once the bot is back."""
        current = await self._stop_progress(job)
        if current.progress_message_id is not None and job.job_id not in self._gone:
            with contextlib.suppress(discord.HTTPException):
                text = messages.progress_text(current, event)
                await self._edit(current, current.progress_message_id, text)

    # ------------------------------------------------------------------ outcomes

    async def deliver(
        self,
        job: JobRecord,
        event: JobEvent,
        *,
        tell: bool = True,
        again: bool = False,
        posted: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Post the clip: through the interaction, else the channel, else the member's DMs.

        False when none of them took it (the clip stays on disk for a later try); `tell` says
        whether to tell the member so. `again`: an earlier try may have reached Discord, so
        look in the channel first. `posted` is awaited the moment Discord has the clip, before
        the tidying up (looking for repeats, ending the progress message) that may wait on
        Discord's rate limits for a while."""
        assert event.clip is not None
        path = event.clip.path
        budget = job.max_bytes or event.clip.size_bytes
        has_it = posted or _nothing
        job = await self._after_the_command_flow(job)
        if again and (found := await self._already_posted(job)) is not None:
            await has_it()
            await self._posted_at(job, found)
            await self._finish_progress(job)
            return True
        text = messages.done_text(job, event)
        view = clip_view(job.job_id, motion=job.options.get("motion_bucket_id"))

        async def post(clip: Path) -> Any:
            return await self._send(job, text, view=view, file=clip, nonce=_nonce(job))

        started = time.monotonic()
        try:
            posted = await self._fitting(job, path, budget, post)
        except DiskFull as exc:
            # No room to re-encode it smaller: kept, and tried again later, when there may be.
            log.error("could not re-encode the clip to fit: %s", exc, extra={"job_id": job.job_id})
            if tell:
                await self._tell(job, messages.undelivered_text(job, no_room=True))
                await self._finish_progress(job, final=messages.kept_for_later_text(job))
            return False
        except discord.HTTPException as exc:
            failure = exc
            why = _not_postable_there(exc)
            if why is not None:
                # The bot may not post there (permissions), or the channel is gone or archived,
                # and the interaction's token is gone: the member still gets the clip, privately.
                log.warning(
                    "cannot post in channel %d (%s: %s); sending the clip by DM",
                    job.channel_id,
                    why,
                    exc.text or exc.code,
                    extra={"job_id": job.job_id},
                )
                if await self._send_by_dm(job, event, path, why, has_it):
                    await self._finish_progress(job)
                    return True
            # discord.py has retried a 5xx for half a minute already. Discord may have stored
            # the clip before failing (a blind retry would post it twice): look.
            elif exc.status >= 500 and (found := await self._already_posted(job)) is not None:
                await has_it()
                await self._posted_at(job, found)
                await self._finish_progress(job)
                return True
            log.error("clip upload failed: %s", failure, extra={"job_id": job.job_id})
            if tell:
                await self._tell(job, messages.undelivered_text(job))
                # No longer "Encoding…", and its Cancel button could only say "finished".
                await self._finish_progress(job, final=messages.kept_for_later_text(job))
            return False
        # discord.py waits at least a second before it sends a webhook post again: a quicker
        # post was sent once, and needs no look at the channel.
        retried = time.monotonic() - started >= WEBHOOK_RETRY_WAIT
        await has_it()
        if retried and isinstance(posted, discord.Message) and posted.webhook_id is not None:
            await self._drop_repeats(job, posted)
        await self._posted_at(job, posted)
        await self._finish_progress(job)
        return True

    async def _posted_at(self, job: JobRecord, message: Any, *, dm: bool = False) -> None:
        """Remember where the clip went, for /history; never in the way of its delivery. (Not
        discord.py's `jump_url`: a webhook's message may not know its server.)"""
        channel = getattr(message, "channel", None)
        if self._set_clip_message is None or channel is None or not hasattr(message, "id"):
            return
        place = "@me" if dm else str(job.guild_id)
        url = f"https://discord.com/channels/{place}/{channel.id}/{message.id}"
        try:
            await self._set_clip_message(job.job_id, url)
        except Exception as exc:
            log.warning(
                "could not record the clip's message: %s", exc, extra={"job_id": job.job_id}
            )

    async def _drop_repeats(self, job: JobRecord, kept: discord.Message) -> None:
        """Delete copies of the clip besides `kept`. discord.py sends a webhook post again after
        a 5xx, and webhooks take no nonce: when Discord had stored the first before failing,
        the channel has the clip twice."""
        webhook = self._webhook(job)
        for message in await self._posted_clips(job):
            if message.id == kept.id or message.webhook_id != kept.webhook_id:
                continue
            log.warning("deleting a repeat of the clip", extra={"job_id": job.job_id})
            with contextlib.suppress(discord.HTTPException):
                # Through the interaction that posted it, whose token is still fresh.
                if webhook is not None:
                    await webhook.delete_message(message.id)
                else:
                    await message.delete()

    async def _posted_clips(self, job: JobRecord) -> list[discord.Message]:
        """The job's clip among the channel's latest messages, as posted by the bot (with its
        token or the interaction's). Empty when unknown (no Read Message History: Discord
        answers an empty list; or the channel cannot be read)."""
        me = self._client.user
        prefix = _clip_name(job, Path()).removeprefix("SPOILER_")
        channel = self._client.get_partial_messageable(job.channel_id)
        found = []
        try:
            async for message in channel.history(limit=RECENT_MESSAGES):
                mine = (me is not None and message.author.id == me.id) or (
                    message.webhook_id is not None and message.webhook_id == job.application_id
                )
                # Discord may mark a spoiler by a flag rather than keep the name's prefix.
                if mine and any(
                    a.filename.removeprefix("SPOILER_").startswith(prefix)
                    for a in message.attachments
                ):
                    found.append(message)
        except discord.HTTPException as exc:
            log.info("could not read the channel: %s", exc, extra={"job_id": job.job_id})
        return found

    async def _fitting(
        self,
        job: JobRecord,
        path: Path,
        budget: int,
        send: Callable[[Path], Awaitable[Any]],
    ) -> Any:
        """`send(clip)`, with the clip re-encoded smaller first when it is over `budget`, and
        again each time Discord answers 413 (its limit is lower than we were told): shrunk to
        fit, never dropped. Each smaller copy is made from the clip itself, not from the last
        copy, whose losses it would add to its own."""
        clip = path
        if await asyncio.to_thread(_size, path) > budget:
            path = await asyncio.to_thread(self._reencode, clip, budget)
        while True:
            try:
                return await send(path)
            except discord.HTTPException as exc:
                if exc.status != 413 or budget <= MIN_REENCODE_BYTES:
                    raise
                # Discord's limit is below the file it refused, whatever its size: a copy made
                # to a budget the file already met would be the same size, and refused again.
                budget = min(budget // 2, await asyncio.to_thread(_size, path) - 1)
                log.info(
                    "upload refused (413); re-encoding to %d bytes",
                    budget,
                    extra={"job_id": job.job_id},
                )
                path = await asyncio.to_thread(self._reencode, clip, budget)

    async def _already_posted(self, job: JobRecord) -> discord.Message | None:
        """The job's clip, if it is in the channel already (unknown is no)."""
        found = await self._posted_clips(job)
        if found:
            log.info("the clip was posted after all", extra={"job_id": job.job_id})
            return found[0]
        return None

    async def hand_over(
        self,
        followup: discord.Webhook,
        job: JobRecord,
        event: JobEvent,
        *,
        posted: Callable[[], Awaitable[None]] | None = None,
        privately: bool = False,
    ) -> bool:
        """Post a clip Discord refused earlier through `followup`, the webhook of a command the
        member just used: its token is fresh and it needs none of the bot's channel permissions.
        `privately`: the command was used in another channel than the clip's, whose members
        may not be meant to see it (a staff or age-restricted channel's clip): only the member
        sees it, without buttons (Delete and Re-roll act on a public clip). `posted`, as for
        `deliver`: awaited the moment Discord has the clip, before the tidying up, whose
        failure then no longer counts against a clip that is up."""
        assert event.clip is not None
        extra: dict[str, Any] = (
            {"ephemeral": True}
            if privately
            else {"view": clip_view(job.job_id, motion=job.options.get("motion_bucket_id"))}
        )
        text = messages.done_text(job, event)
        if privately:
            text += "\n" + messages.handed_over_privately_note(job)

        async def post(clip: Path) -> Any:
            return await followup.send(
                text,
                file=_clip_file(job, clip),
                allowed_mentions=_only_the_member(job),
                wait=True,
                **extra,
            )

        try:
            sent = await self._fitting(job, event.clip.path, job.max_bytes or DM_UPLOAD_LIMIT, post)
        except Exception as exc:
            # Refused, no room to shrink it, the connection lost, the re-encode failed: kept
            # for a later try, like any clip Discord would not take.
            log.warning("handing the clip over failed: %s", exc, extra={"job_id": job.job_id})
            return False
        await (posted or _nothing)()
        try:
            await self._posted_at(job, sent)
            await self._finish_progress(job)
        except Exception:
            log.exception(
                "tidying up after a handed-over clip failed", extra={"job_id": job.job_id}
            )
        return True

    async def _send_by_dm(
        self,
        job: JobRecord,
        event: JobEvent,
        path: Path,
        why: str,
        posted: Callable[[], Awaitable[None]],
    ) -> bool:
        async def post(clip: Path) -> Any:
            # No buttons: Re-roll and Delete act on a server, and a DM has none.
            return await channel.send(
                messages.dm_clip_text(job, event, why),
                file=_clip_file(job, clip),
                # As in the channel: a retry after a 5xx that Discord had stored is not a
                # second copy. Its own, in case Discord matches nonces across channels.
                nonce=_nonce(job, dm=True),
            )

        try:
            channel = await self._client.create_dm(discord.Object(job.user_id))
            # A DM takes 10 MiB, whatever the server's boost level allowed.
            sent = await self._fitting(
                job, path, min(job.max_bytes or DM_UPLOAD_LIMIT, DM_UPLOAD_LIMIT), post
            )
        except (discord.HTTPException, DiskFull) as exc:
            # The member does not take DMs from the bot (50007), Discord refused the upload, or
            # there was no room on the disk to make it smaller.
            log.warning("could not DM the clip either: %s", exc, extra={"job_id": job.job_id})
            return False
        await posted()
        await self._posted_at(job, sent, dm=True)
        return True

    async def failed(self, job: JobRecord, message: str) -> None:
        job = await self._after_the_command_flow(job)
        text = messages.failed_text(job, message)
        await self._stop_progress(job)
        try:
            await self._send(job, text)
        except discord.HTTPException as exc:
            log.error("could not tell the member: %s", exc, extra={"job_id": job.job_id})
            # The progress message says it instead (the bot may edit its own message where it
            # may no longer post), and where the channel is shut to the bot, a DM too: a
            # failure must not end in silence, its progress message gone.
            edited = await self._finish_progress(job, final=text)
            if not edited or _not_postable_there(exc) is not None:
                await self._dm(job, text)
            return
        await self._finish_progress(job)

    async def _dm(self, job: JobRecord, text: str) -> None:
        try:
            channel = await self._client.create_dm(discord.Object(job.user_id))
            await channel.send(text)
        except discord.HTTPException as exc:  # DMs closed (50007): nothing more to try
            log.warning("could not DM the member either: %s", exc, extra={"job_id": job.job_id})

    async def cancelled(self, job: JobRecord) -> None:
        job = await self._after_the_command_flow(job)
        # The progress message ends saying so, with no ping: the member (or a moderator) just
        # cancelled it and was told privately.
        text = messages.cancelled_text(job)
        if not await self._finish_progress(job, final=text):
            await self._tell(job, text, mentions=discord.AllowedMentions.none())

    def flow_began(self, job_id: str) -> None:
        """The command that queued the job is answering it now (see `_after_the_command_flow`)."""
        self._flows[job_id] = asyncio.Event()

    def flow_ended(self, job_id: str) -> None:
        flow = self._flows.pop(job_id, None)
        if flow is not None:
            flow.set()

    async def _after_the_command_flow(self, job: JobRecord) -> JobRecord:
        """Wait for the command's own flow to answer and post its progress message. A clip that
        ends within moments of being queued would otherwise send its outcome first: Discord
        shows that followup in place of the "thinking..." answer (ephemeral), the flow's "Got
        it" then overwrites it, and the progress message the flow posts next stays for good.
        A flow known to be under way is waited for to its end (discord.py retries a 5xx for
        about 25 s), one not yet known for a few seconds after the job was queued."""
        current = await self._current(job)
        while current.progress_message_id is None:
            flow = self._flows.get(job.job_id)
            if flow is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flow.wait(), COMMAND_FLOW_MAX.total_seconds())
                return await self._current(current)
            if _since_queued(current) >= COMMAND_FLOW_WAIT:
                break
            await asyncio.sleep(0.05)
            current = await self._current(current)
        return current

    async def _tell(
        self, job: JobRecord, text: str, *, mentions: discord.AllowedMentions | None = None
    ) -> None:
        try:
            await self._send(job, text, mentions=mentions)
        except discord.HTTPException as exc:
            log.error("could not tell the member: %s", exc, extra={"job_id": job.job_id})

    # --------------------------------------------------------- token or channel

    def _webhook(self, job: JobRecord) -> discord.Webhook | None:
        """The interaction's webhook while its token is alive, else None (use the channel)."""
        token = job.interaction_token
        if not token or job.application_id is None or token in self._dead_tokens:
            return None
        if _age(job) > TOKEN_LIFETIME:
            return None
        return discord.Webhook.partial(job.application_id, token, client=self._client)

    def _token_died(self, job: JobRecord, exc: discord.HTTPException) -> bool:
        # 401 / 50027 once the 15 minutes are over; Discord has also been seen answering 404
        # Unknown Webhook to a token well within them: the channel works either way.
        if exc.status == 401 or exc.code in (INVALID_WEBHOOK_TOKEN, UNKNOWN_WEBHOOK):
            if job.interaction_token:
                self._dead_tokens.add(job.interaction_token)
            log.info("interaction token expired; using the channel", extra={"job_id": job.job_id})
            return True
        return False

    async def _send(
        self,
        job: JobRecord,
        text: str,
        *,
        view: discord.ui.View | None = None,
        file: Path | None = None,
        nonce: str | None = None,
        mentions: discord.AllowedMentions | None = None,
    ) -> discord.Message:
        """Send through the interaction's webhook, or the channel once the token is dead.

        `file`: the clip; each try opens it afresh, since discord.py closes a
        `discord.File` once it has been sent, even when the request failed. `nonce` goes with
        a channel message with `enforce_nonce`: for a few minutes Discord answers a repeat of
        the same message with the first one instead of posting it twice. (discord.py picks a
        random one per call, which covers its own retries but not ours.) Interaction webhooks
        take none."""
        kwargs: dict[str, Any] = {"allowed_mentions": mentions or _only_the_member(job)}
        if view is not None:
            kwargs["view"] = view
        webhook = self._webhook(job)
        if webhook is not None:
            if file is not None:
                kwargs["file"] = _clip_file(job, file)
            try:
                return await webhook.send(text, wait=True, **kwargs)
            except discord.HTTPException as exc:
                if not self._token_died(job, exc):
                    raise
        if file is not None:
            kwargs["file"] = _clip_file(job, file)
        channel = self._client.get_partial_messageable(job.channel_id)
        # Not a reply to the progress message: the outcome replaces it (a reply would point at
        # "Original message was deleted"), and the mention notifies the member.
        if nonce is not None:
            kwargs["nonce"] = nonce
        return await channel.send(text, **kwargs)

    async def _edit(
        self, job: JobRecord, message_id: int, text: str, *, buttons: bool = True
    ) -> None:
        """`buttons=False` also removes the message's buttons."""
        changes: dict[str, Any] = {"content": text}
        if not buttons:
            changes["view"] = None
        webhook = self._webhook(job)
        if webhook is not None:
            try:
                await webhook.edit_message(message_id, **changes)
                return
            except discord.HTTPException as exc:
                if not self._token_died(job, exc):
                    raise
        channel = self._client.get_partial_messageable(job.channel_id)
        await channel.get_partial_message(message_id).edit(**changes)

    async def _delete(self, job: JobRecord, message_id: int) -> None:
        webhook = self._webhook(job)
        if webhook is not None:
            try:
                await webhook.delete_message(message_id)
                return
            except discord.HTTPException as exc:
                if not self._token_died(job, exc):
                    raise
        channel = self._client.get_partial_messageable(job.channel_id)
        await channel.get_partial_message(message_id).delete()


async def _nothing() -> None:
    pass

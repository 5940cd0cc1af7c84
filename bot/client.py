"""The discord.py client: wires the cogs, the buttons and the error handler to the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.interactions import defer, member_of, queue_from_interaction
from bot.presenter import DiscordPresenter, Reencoder
from bot.service import AnimateService, Member, Origin, Variation
from bot.views import ClipButton, PictureMenus, StalePictureMenu, clip_view
from generation.errors import PictureGone, is_disk_full
from generation.images import ImageLimits

log = logging.getLogger(__name__)

GENERIC_ERROR = "Something went wrong on my side. You were not charged; please try again."
# Any command, not only a clip's (a setting, a cancel): the database could not be written.
DISK_FULL_REPLY = (
    "The bot's server is out of disk space, so I couldn't do that. Nothing was charged; please "
    "try again later (the host has to free some space)."
)
# Servers whose commands are looked at on start, for a bot registered with `sync --guild`.
GUILDS_CHECKED_FOR_COMMANDS = 5
# How long a shutdown waits for the last events of the stopped queue to be shown.
PUMP_DRAIN_SECONDS = 10.0
# A second press of the same button by the same member within this many seconds is a double
# click (Discord sends both): counted once, so a Re-roll is not made (and charged) twice.
REPEAT_CLICK_SECONDS = 3.0
# How long a repeated press waits for the first to be settled before it answers; well inside
# Discord's 3 seconds. A first press refused (no clips left, not theirs to delete) made
# nothing, so the second is handled on its own rather than told "already on it".
REPEAT_WAIT_SECONDS = 1.5
_REPEATED = {
    "cancel": "Already cancelling that clip.",
    "delete": "Already deleting that clip.",
}
_REPEATED_VARIATION = (
    "You pressed that twice: one new clip is on its way (the second press was not counted)."
)


class NotYours(Exception):
    user_message = "Only the member who made this clip, or a moderator, can delete it."


@dataclass(frozen=True)
class BotConfig:
    models: list[str]
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # Seconds between progress edits of one message.
    edit_interval: float = 3.0
    # How long discord.py waits for GUILD_CREATEs before on_ready; tests make it small.
    guild_ready_timeout: float = 2.0
    # False for a process that only logs in to register the commands (`sync`): it must leave
    # the clips alone, which the bot that is running may be making right now.
    serve: bool = True
    # Seconds between looks at the queue for the bot's status line (sent only when it changed).
    presence_interval: float = 30.0


class SvdBot(commands.Bot):
    def __init__(self, *, service: AnimateService, config: BotConfig, reencode: Reencoder) -> None:
        intents = discord.Intents.none()
        # Guilds: channels and roles; we never read message content.
        intents.guilds = True
        # A bot that never joins a voice channel needs neither PyNaCl nor davey: no warning on
        # each start that looks like something is missing.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            guild_ready_timeout=config.guild_ready_timeout,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.service = service
        self.config = config
        self.presenter = DiscordPresenter(
            self,
            reencode=reencode,
            set_progress_message=service.set_progress_message,
            lookup=service.job,
            set_clip_message=service.set_clip_message,
            edit_interval=config.edit_interval,
        )
        self._pump: asyncio.Task[None] | None = None
        self._presence: asyncio.Task[None] | None = None
        self._presence_shown: str | None = None
        # (member, button) → when it was last pressed and whether that press went through
        # (unsettled while it is being handled), for double clicks.
        self._clicks: dict[tuple[int, str], tuple[float, asyncio.Future[bool]]] = {}
        # The picture menus (Apps → Animate) this process made: see StalePictureMenu.
        self.picture_menus: PictureMenus = {}
        self._commands_checked = False
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        from bot.cogs.admin import QuotaAdmin
        from bot.cogs.animate import AnimateCog
        from bot.cogs.defaults import DefaultsCog
        from bot.cogs.help import HelpCog

        await self.add_cog(AnimateCog(self))
        await self.add_cog(DefaultsCog(self))
        await self.add_cog(HelpCog(self))
        await self.add_cog(QuotaAdmin(self))
        self.add_dynamic_items(ClipButton, StalePictureMenu)
        if not self.config.serve:
            return
        # Before the gateway connects: interactions arrive from then on, while on_ready waits
        # for every server's GUILD_CREATE, and a clip that failed or finished in that window
        # must still reach its member. (The presenter speaks HTTP only, ready after login.)
        self._pump = asyncio.create_task(self.service.pump(self.presenter))
        self._presence = asyncio.create_task(self._show_presence(), name="svd-presence")
        # Also before the gateway connects (setup_hook runs once per process): the clips that
        # waited before a restart go back in line ahead of any new request, within the caps.
        try:
            counts = await self.service.resume(self.presenter)
            log.info("resumed after restart: %s", counts)
        except Exception:
            log.exception("resuming the clips from before the restart failed")

    async def on_ready(self) -> None:
        log.info("connected as %s to %d guild(s)", self.user, len(self.guilds))
        if not self._commands_checked:
            self._commands_checked = True  # on_ready comes again after each reconnect
            try:
                registered = await self._commands_registered()
            except Exception as exc:  # a refusal, a dropped connection: no warning either way
                log.debug("could not list the registered commands: %s", type(exc).__name__)
                registered = True
            if not registered:
                # The bot runs, and members see no /animate: the host's likeliest first mistake.
                log.warning(
                    "no slash commands are registered with Discord yet, so members cannot see "
                    "/animate: run `./run.sh sync --guild YOUR_SERVER_ID` (instant) or "
                    "`./run.sh sync` (every server), or with Docker "
                    "`docker compose run --rm bot sync --guild YOUR_SERVER_ID`"
                )

    async def _commands_registered(self) -> bool:
        """Whether /animate is registered globally or in one of the first few servers the bot
        is in (`sync --guild` registers it there only)."""
        if any(c.name == "animate" for c in await self.tree.fetch_commands()):
            return True
        for guild in self.guilds[:GUILDS_CHECKED_FOR_COMMANDS]:
            if any(c.name == "animate" for c in await self.tree.fetch_commands(guild=guild)):
                return True
        return not self.guilds  # in no server yet: nothing to see there either way

    async def _show_presence(self) -> None:
        """The queue in the bot's status line, so members see how busy it is before asking."""
        await self.wait_until_ready()
        while not self.is_closed():
            try:
                full = await self.service.disk_full() is not None
                text = messages.presence_text(self.service.line(), disk_full=full)
                if text != self._presence_shown:
                    activity = discord.CustomActivity(name=text)
                    # Also the one the next IDENTIFY sends, so a new session starts with it.
                    self.activity = activity
                    await self.change_presence(activity=activity)
                    self._presence_shown = text
            except Exception as exc:  # a dropped connection: the next look tries again
                log.debug("could not set the status: %s", type(exc).__name__)
            await asyncio.sleep(self.config.presence_interval)

    async def drain(self) -> None:
        """After the queue stopped: let the pump hand on its last events (a clip finished in
        the grace period, "the bot is restarting" on each progress message) before the service
        and the connection close."""
        if self._pump is not None:
            await asyncio.wait({self._pump}, timeout=PUMP_DRAIN_SECONDS)

    async def close(self) -> None:
        if self._presence is not None:
            self._presence.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._presence
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await super().close()

    # ------------------------------------------------------------------ buttons

    async def handle_button(
        self, interaction: discord.Interaction, action: str, job_id: str
    ) -> None:
        key = (interaction.user.id, f"{action}:{job_id}")
        earlier = self._earlier_press(key)
        if earlier is not None and await self._went_through(earlier):
            text = _REPEATED.get(action, _REPEATED_VARIATION)
            with contextlib.suppress(discord.HTTPException):
                await interaction.response.send_message(text, ephemeral=True)
            return
        settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._clicks[key] = (time.monotonic(), settled)
        went_through = False
        try:
            if action == "delete":
                await self._delete_clip(interaction, job_id)
            elif action == "cancel":
                await self._cancel_job(interaction, job_id)
            else:
                await self._vary(interaction, job_id, action)  # type: ignore[arg-type]
            went_through = True
        except Exception as exc:
            await self.reply_error(interaction, exc)
        finally:
            settled.set_result(went_through)
            if not went_through and self._clicks.get(key, (0.0, None))[1] is settled:
                del self._clicks[key]

    def _earlier_press(self, key: tuple[int, str]) -> asyncio.Future[bool] | None:
        """The same member's press of the same button within `REPEAT_CLICK_SECONDS`, if any."""
        now = time.monotonic()
        if len(self._clicks) > 1000:  # forget old clicks now and then
            self._clicks = {
                k: v for k, v in self._clicks.items() if now - v[0] < REPEAT_CLICK_SECONDS
            }
        last = self._clicks.get(key)
        if last is None or now - last[0] >= REPEAT_CLICK_SECONDS:
            return None
        return last[1]

    @staticmethod
    async def _went_through(press: asyncio.Future[bool]) -> bool:
        """Whether the earlier press did what was asked; one still being handled after
        `REPEAT_WAIT_SECONDS` is taken to (it got past the checks that refuse quickly)."""
        try:
            return await asyncio.wait_for(asyncio.shield(press), REPEAT_WAIT_SECONDS)
        except TimeoutError:
            return True

    async def _vary(
        self, interaction: discord.Interaction, job_id: str, variation: Variation
    ) -> None:
        async def submit(member: Member, origin: Origin) -> Any:
            return await self.service.vary(member, job_id, variation, origin)

        try:
            await queue_from_interaction(interaction, self.service, submit)
        except PictureGone:
            # Every later press would be told the same: only Delete stays. (The error handler
            # then tells this member why.)
            if interaction.message is not None:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.message.edit(view=clip_view(job_id, picture_gone=True))
            raise

    async def _delete_clip(self, interaction: discord.Interaction, job_id: str) -> None:
        # The checks read the database, which may be slow: answer Discord first. A refusal then
        # comes as an ephemeral followup, the clip message untouched.
        await defer(interaction)
        member = await member_of(interaction, self.service)
        # The clip's message names its requester first ("✅ @member, your clip is ready"): the
        # bot wrote it (only the bot's own messages carry its buttons).
        mentions = interaction.message.raw_mentions[:1] if interaction.message else []
        named = mentions[0] if mentions else None
        if not await self.service.can_delete(member, job_id, named):
            raise NotYours()
        try:
            await interaction.delete_original_response()
        except discord.NotFound:
            return  # already gone (deleted by hand, or another moderator was quicker)
        await self.service.deleted(member, job_id, named)

    async def _cancel_job(self, interaction: discord.Interaction, job_id: str) -> None:
        # Cancelling may wait on Redis (scale-out), the member's look-up on the database: answer
        # Discord first.
        await defer(interaction, ephemeral=True, thinking=True)
        member = await member_of(interaction, self.service)
        cancelled = await self.service.cancel(member, job_id)
        if not cancelled:
            text = "That clip is already finished or cancelled."
        elif cancelled[0].user_id == member.user_id:
            text = "🚫 Cancelled. You were not charged."
        else:
            text = f"🚫 Cancelled <@{cancelled[0].user_id}>'s clip; they were not charged."
        await interaction.followup.send(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    # ------------------------------------------------------------------- errors

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        await self.reply_error(interaction, original)

    async def reply_error(self, interaction: discord.Interaction, error: BaseException) -> None:
        """One place that turns errors into a message the member understands."""
        if isinstance(error, discord.HTTPException) and error.code == 40060:
            # Already acknowledged: the answer reached Discord though its reply was lost, and
            # discord.py's retry was refused. The member has it: replacing it would be wrong.
            log.warning("an interaction's answer landed but its reply was lost (40060)")
            return
        if isinstance(error, discord.NotFound) and error.code == 10062:
            # Unknown interaction: answered after Discord's 3 s (a busy host), so no message can
            # reach the member either. Load, not a bug: a warning, not a traceback.
            log.warning("an interaction was answered too late for Discord (10062)")
            return
        text = getattr(error, "user_message", None)
        if text is not None:
            # A refusal (no clips left, a full queue, not a picture…): normal, but the host
            # should be able to see what members run into.
            log.info("refused: %s", type(error).__name__)
        if text is None:
            if isinstance(error, app_commands.NoPrivateMessage):
                text = "I only make clips in servers, not in direct messages."
            elif isinstance(error, app_commands.MissingPermissions):
                text = "You don't have permission to do that."
            elif isinstance(error, app_commands.TransformerError):
                text = f"I couldn't understand `{error.value}`: {error}"
            elif is_disk_full(error):
                # The database or DATA_DIR filled up: the host must act, the member can only
                # wait; "try again" would send them straight back into it.
                log.error(
                    "command failed: the disk is full (free space in DATA_DIR and the "
                    "database's folder)",
                    exc_info=error,
                )
                text = DISK_FULL_REPLY
            else:
                log.error("command failed", exc_info=error)
                text = GENERIC_ERROR
        text = messages.truncate(f"⚠️ {text}")
        try:
            if not interaction.response.is_done():
                try:
                    await interaction.response.send_message(text, ephemeral=True)
                    return
                except discord.HTTPException as exc:
                    # 40060: a deferral reached Discord though its answer never came back (the
                    # webhook client retries a 5xx): answer in its place.
                    if exc.code != 40060:
                        raise
            if interaction.type is discord.InteractionType.component:
                # The original response of a click is the clip message itself: never edit it.
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.edit_original_response(content=text)
        except discord.HTTPException as exc:
            log.warning("could not send the error message: %s", exc)

"""The member's commands: /animate (and Apps → Animate), /queue, /cancel, /history, /quota."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.interactions import TimelyReply, defer, member_of, queue_from_interaction
from bot.pictures import Picture, message_pictures, mib
from bot.service import Accepted, Member, Origin
from bot.views import PicturePicker
from generation.errors import GenerationError

if TYPE_CHECKING:
    from bot.client import SvdBot

log = logging.getLogger(__name__)

# A slow CDN must not hold a member's /animate for the five minutes aiohttp would wait.
DOWNLOAD_TIMEOUT_SECONDS = 60.0


MESSAGE_COMMAND = "Animate"
NOT_YOUR_MESSAGE = (
    "**Animate** works on your own messages: someone else's picture is theirs to animate. "
    "Post your picture, or use `/animate` with it."
)
NO_PICTURE = (
    "That message has no picture: no attachment, forwarded file or image link. Use **Animate** "
    "on a message with a PNG, JPEG, WebP, GIF, HEIC or AVIF picture, or `/animate` with one."
)


def _model_label(model: str) -> str:
    """A short, readable choice name for a hub id or a folder (Discord allows 100 chars). A
    folder in Hugging Face's cache (`.../models--org--name/snapshots/<commit>`) is named for
    its model, not for the commit hash that ends its path."""
    parts = model.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].split("--")[-1][:100]
    return parts[-1][:100] or model[:100]


def _model_labels(models: list[str]) -> list[str]:
    """Each model's label, told apart with a number where two would read the same (two
    snapshots of one model, two folders of one name)."""
    labels = [_model_label(m) for m in models]
    counts = {label: labels.count(label) for label in labels}
    seen: dict[str, int] = {}
    told_apart = []
    for label in labels:
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            suffix = f" ({seen[label]})"
            label = label[: 100 - len(suffix)] + suffix
        told_apart.append(label)
    return told_apart


def _model_value(model: str) -> str:
    """The choice's value: the model itself, or, past Discord's 100 characters (a snapshot
    folder's path), a digest of it, so that `sync` is not refused. Not an index: commands
    registered before SVD_MODEL changed would then pick another model without a word."""
    if len(model) <= 100:
        return model
    return "model-" + hashlib.sha256(model.encode()).hexdigest()[:16]


class AnimateCog(commands.Cog):
    def __init__(self, bot: SvdBot) -> None:
        self.bot = bot
        self._animate = build_animate_command(self, bot.config.models)
        # Apps → Animate on a message: a picture already in the channel, without uploading it
        # again. A context menu cannot be declared in a cog, so it is added to the tree here.
        self._animate_message = app_commands.ContextMenu(
            name=MESSAGE_COMMAND, callback=self.animate_message
        )
        app_commands.guild_only(self._animate_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self._animate)
        self.bot.tree.add_command(self._animate_message)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self._animate.name)
        self.bot.tree.remove_command(
            self._animate_message.name, type=discord.AppCommandType.message
        )

    async def animate_message(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        """A picture of the member's own message (attached, forwarded or linked; they pick one
        of several), with their defaults (`/defaults`). A forward is theirs: they chose to
        share that picture here."""
        if message.author.id != interaction.user.id:
            # Someone's photo is theirs to animate: a clip of it is not the clicker's to post.
            await interaction.response.send_message(NOT_YOUR_MESSAGE, ephemeral=True)
            return
        limit = self.bot.config.image_limits.max_bytes
        found = message_pictures(message, self.bot.http, max_bytes=limit)
        # A file Discord says is too large would only be refused once picked: not offered.
        # (A linked picture's size is not known, 0, until its download stops past the limit.)
        fitting = [f for f in found if f.picture.size <= limit]
        if not found:
            await interaction.response.send_message(NO_PICTURE, ephemeral=True)
        elif len(fitting) <= 1:
            # The one that fits; or, when none does, the first, refused with its size.
            await self.animate(interaction, (fitting or found)[0].picture)
        else:
            picker = PicturePicker(
                fitting, self._animate_picked, asked=interaction, menus=self.bot.picture_menus
            )
            text = picker.text
            if left_out := len(found) - len(fitting):
                text += (
                    f"\n-# {left_out} more {'is' if left_out == 1 else 'are'} over "
                    f"{mib(limit)} MiB, the most I accept, and not listed."
                )
            await interaction.response.send_message(text, view=picker, ephemeral=True)

    async def _animate_picked(self, interaction: discord.Interaction, picture: Picture) -> None:
        # A menu's callback: its errors reach no command error handler, so they are answered here.
        try:
            await self.animate(interaction, picture)
        except Exception as exc:
            await self.bot.reply_error(interaction, exc)

    async def animate(
        self,
        interaction: discord.Interaction,
        image: Picture,
        *,
        motion: int | None = None,
        preset: str | None = None,
        format: str | None = None,
        seed: int | None = None,
        noise: float | None = None,
        fps: int | None = None,
        steps: int | None = None,
        quality: str | None = None,
        bounce: bool | None = None,
        smooth: bool | None = None,
        fit: str | None = None,
        model: str | None = None,
    ) -> None:
        service = self.bot.service
        # Cheap checks first, from what Discord tells us about the file, so an obvious mistake is
        # answered at once and costs nothing.
        problem = self._precheck(image)
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True)
            return
        await defer(interaction, ephemeral=True, thinking=True)
        if interaction.guild_id is None:
            await member_of(interaction, service)  # raises NotInGuild with the message
        options = await service.build_options(
            interaction.guild_id or 0,
            user_id=interaction.user.id,
            preset=preset,
            motion_bucket_id=motion,
            format=format,
            seed=seed,
            noise_aug_strength=noise,
            fps=fps,
            num_inference_steps=steps,
            quality=quality,
            ping_pong=bounce,
            interpolate=smooth,
            fit=fit,
            model=model,
        )
        spoiler = image.is_spoiler()

        async def download() -> bytes:
            try:
                # Attachment URLs are signed and expire: download now, not when the job runs.
                async with asyncio.timeout(DOWNLOAD_TIMEOUT_SECONDS):
                    return await image.read()
            except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
                # The type only: a connection error's text holds the signed URL.
                log.info("attachment download failed: %s", type(exc).__name__)
                raise GenerationError(
                    "I couldn't download your picture (its link may have expired). "
                    "Please post or upload it again."
                ) from None

        async def submit(member: Member, origin: Origin) -> Accepted:
            # The download only once the member is known to be able to queue it.
            return await service.submit(member, download, options, origin, spoiler=spoiler)

        await queue_from_interaction(interaction, service, submit)

    def _precheck(self, image: Picture) -> str | None:
        limit = self.bot.config.image_limits.max_bytes
        if image.size > limit:
            return (
                f"That file is {image.size / 2**20:.1f} MiB; the most I accept is "
                f"{mib(limit)} MiB. Please send a smaller picture."
            )
        content_type = (image.content_type or "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith("image/"):
            return (
                "That attachment isn't a picture. Please attach a PNG, JPEG, WebP, GIF, HEIC or "
                "AVIF image."
            )
        return None

    @app_commands.command(name="queue", description="Your clips in the queue and when they start")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        service = self.bot.service
        async with TimelyReply(interaction) as reply:
            member = await member_of(interaction, service)
            jobs, snapshot = await service.my_jobs(member)
            await reply.send(messages.queue_text(jobs, snapshot))
        # A finished clip Discord refused earlier (the bot may not post in its channel, the
        # member takes no DMs, an outage): this command's fresh token can post it now.
        presenter, followup = self.bot.presenter, interaction.followup
        try:
            refused = await service.hand_over(
                member,
                lambda job, event, posted: presenter.hand_over(
                    followup,
                    job,
                    event,
                    posted=posted,
                    privately=job.channel_id != interaction.channel_id,
                ),
            )
        except Exception:
            # The list is answered; the error handler's "try again" would replace it, for
            # clips that stay kept and are tried again anyway.
            log.exception("handing over refused clips failed")
            return
        if refused:
            await followup.send(messages.not_handed_over_text(refused), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your waiting or running clips")
    @app_commands.guild_only()
    async def cancel(self, interaction: discord.Interaction) -> None:
        # Cancelling may wait on Redis (scale-out), even the member's look-up on the database:
        # answer Discord first.
        await defer(interaction, ephemeral=True, thinking=True)
        member = await member_of(interaction, self.bot.service)
        cancelled = await self.bot.service.cancel(member)
        if not cancelled:
            text = "You have no clips waiting or in progress."
        else:
            n = len(cancelled)
            text = f"🚫 Cancelled {n} clip{'s' if n != 1 else ''}. You were not charged."
        await interaction.edit_original_response(content=text)

    @app_commands.command(name="history", description="Your latest clips here, with links")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction) -> None:
        async with TimelyReply(interaction) as reply:
            member = await member_of(interaction, self.bot.service)
            jobs = await self.bot.service.history(member)
            await reply.send(messages.history_text(jobs))

    @app_commands.command(name="quota", description="How many clips you have left")
    @app_commands.guild_only()
    async def quota(self, interaction: discord.Interaction) -> None:
        async with TimelyReply(interaction) as reply:
            member = await member_of(interaction, self.bot.service)
            status = await self.bot.service.quota(member)
            await reply.send(messages.quota_text(status))


Preset = Literal["subtle", "normal", "dramatic"]
Format = Literal["mp4", "gif"]
# SVD's whole range, the one More / Less motion move in: a clip's motion can always be typed.
Motion = app_commands.Range[int, 0, 255]
Noise = app_commands.Range[float, 0.0, 1.0]
Fps = app_commands.Range[int, 1, 30]
Steps = app_commands.Range[int, 1, 50]
Seed = app_commands.Range[int, 0, 2**32 - 1]

OPTION_DESCRIPTIONS = {
    "image": "The picture to animate (PNG, JPEG, WebP, GIF, HEIC or AVIF)",
    "motion": "How much it moves: 0 (still) to 255 (wild); 127 by default",
    "preset": "Motion without numbers: subtle, normal or dramatic",
    "format": "mp4 (small, smooth) or gif (loops everywhere)",
    "seed": "Reuse a seed to reproduce a clip; random when empty",
    "noise": "0.0-1.0: more noise, more freedom to drift from the picture (0.02)",
    "fps": "Frame rate the model imagines, 1-30 (7); higher means slower motion",
    "steps": "Denoising steps (25), up to the server's cap: fewer is faster, rougher",
    "quality": "best (default), or draft: faster, with a little less detail",
    "bounce": "Play forwards, then backwards: a loop without a jump",
    "smooth": "Twice the frames, the in-between ones interpolated: smoother, slower to save",
    "fit": "A picture of another shape: crop it to fill (default), or keep it whole",
    "model": "Which model to use",
}
FIT_CHOICES = [
    app_commands.Choice(name="crop to fill (default)", value="crop"),
    app_commands.Choice(name="whole picture, on a blurred copy of itself", value="whole"),
]
QUALITY_CHOICES = [
    app_commands.Choice(name="best (default)", value="best"),
    app_commands.Choice(name="draft: faster, a little less detail", value="draft"),
]


def build_animate_command(
    cog: AnimateCog, models: list[str]
) -> app_commands.Command[Any, ..., None]:
    """/animate, with the `model` option only when the host configured more than one model."""
    # An unknown value (commands registered before SVD_MODEL changed) goes on as it came, to be
    # refused as "not available".
    model_of = {_model_value(m): m for m in models}

    @app_commands.choices(quality=QUALITY_CHOICES, fit=FIT_CHOICES)
    async def animate(
        interaction: discord.Interaction,
        image: discord.Attachment,
        motion: Motion | None = None,
        preset: Preset | None = None,
        format: Format | None = None,
        seed: Seed | None = None,
        noise: Noise | None = None,
        fps: Fps | None = None,
        steps: Steps | None = None,
        quality: str | None = None,
        bounce: bool | None = None,
        smooth: bool | None = None,
        fit: str | None = None,
        model: str | None = None,
    ) -> None:
        await cog.animate(
            interaction,
            image,
            motion=motion,
            preset=preset,
            format=format,
            seed=seed,
            noise=noise,
            fps=fps,
            steps=steps,
            quality=quality,
            bounce=bounce,
            smooth=smooth,
            fit=fit,
            model=model_of.get(model, model) if model is not None else None,
        )

    callback: Any = animate
    descriptions = dict(OPTION_DESCRIPTIONS)
    if len(models) > 1:
        shown = models[:25]
        choices = [
            app_commands.Choice(name=label, value=_model_value(m))
            for m, label in zip(shown, _model_labels(shown), strict=True)
        ]
        callback = app_commands.choices(model=choices)(animate)
    else:
        # discord.py builds the options from the callback's signature: without `model` there,
        # Discord shows no such option and the callback gets its default, the host's model.
        signature = inspect.signature(animate)
        animate.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for p in signature.parameters.values() if p.name != "model"]
        )
        del descriptions["model"]
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name="animate",
        description="Turn a picture into a short video clip",
        callback=app_commands.describe(**descriptions)(callback),
    )
    # The decorator, not the attribute: it also sets `contexts`, which Discord now reads instead of
    # the deprecated dm_permission.
    app_commands.guild_only(command)
    return command

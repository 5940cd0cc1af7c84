"""/defaults: a member's own defaults for /animate and Apps → Animate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.cogs.animate import (
    FIT_CHOICES,
    OPTION_DESCRIPTIONS,
    QUALITY_CHOICES,
    Format,
    Fps,
    Motion,
    Preset,
)
from bot.interactions import TimelyReply, member_of

if TYPE_CHECKING:
    from bot.client import SvdBot


# What `forget:` drops, by choice: motion is one default, a preset or a number.
FORGETS: dict[str, tuple[str, ...]] = {
    "motion": ("preset", "motion_bucket_id"),
    "format": ("format",),
    "fps": ("fps",),
    "quality": ("quality",),
    "bounce": ("ping_pong",),
    "smooth": ("interpolate",),
    "fit": ("fit",),
}
FORGET_CHOICES = [
    app_commands.Choice(name="motion (preset or number)" if n == "motion" else n, value=n)
    for n in FORGETS
]


class DefaultsCog(commands.Cog):
    def __init__(self, bot: SvdBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="defaults", description="Your own defaults for /animate and Apps → Animate"
    )
    @app_commands.guild_only()
    @app_commands.describe(
        preset=OPTION_DESCRIPTIONS["preset"],
        motion=OPTION_DESCRIPTIONS["motion"],
        format=OPTION_DESCRIPTIONS["format"],
        fps=OPTION_DESCRIPTIONS["fps"],
        quality=OPTION_DESCRIPTIONS["quality"],
        bounce=OPTION_DESCRIPTIONS["bounce"],
        smooth=OPTION_DESCRIPTIONS["smooth"],
        fit=OPTION_DESCRIPTIONS["fit"],
        forget="Forget one of your defaults (a clip then gets the server's or the bot's)",
        reset="Forget your defaults first (then set any given here)",
    )
    @app_commands.choices(quality=QUALITY_CHOICES, fit=FIT_CHOICES, forget=FORGET_CHOICES)
    async def defaults(
        self,
        interaction: discord.Interaction,
        preset: Preset | None = None,
        motion: Motion | None = None,
        format: Format | None = None,
        fps: Fps | None = None,
        quality: str | None = None,
        bounce: bool | None = None,
        smooth: bool | None = None,
        fit: str | None = None,
        forget: str | None = None,
        reset: bool = False,
    ) -> None:
        service = self.bot.service
        async with TimelyReply(interaction) as reply:
            member = await member_of(interaction, service)
            changes = {
                "preset": preset,
                "motion_bucket_id": motion,
                "format": format,
                "fps": fps,
                "quality": quality,
                "ping_pong": bounce,
                "interpolate": smooth,
                "fit": fit,
            }
            forgotten = FORGETS.get(forget or "", ())
            typed = any(v is not None for v in changes.values())
            mine = before = await service.my_defaults(member.user_id)
            if reset or forgotten or typed:
                mine = await service.set_my_defaults(
                    member.user_id, reset=reset, forget=forgotten, **changes
                )
            # Forgetting what was never set saves nothing: no "Saved" for it.
            saved = typed or mine != before
            options = await service.build_options(member.guild_id, user_id=member.user_id)
            await reply.send(messages.defaults_text(options, mine, saved=saved))

"""/help: how to make a clip, and what this server gives the member now."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.interactions import TimelyReply, member_of

if TYPE_CHECKING:
    from bot.client import SvdBot


class HelpCog(commands.Cog):
    def __init__(self, bot: SvdBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to make a clip, and what you have here")
    @app_commands.guild_only()
    async def help(self, interaction: discord.Interaction) -> None:
        async with TimelyReply(interaction) as reply:
            member = await member_of(interaction, self.bot.service)
            overview = await self.bot.service.overview(member)
            await reply.send(messages.help_text(overview))

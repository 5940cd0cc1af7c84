"""Buttons on progress messages and clips.

They are dynamic items: the custom_id carries the action and the job id, so a click after a
restart is still understood without any view having been re-attached.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, cast

import discord

from generation.options import MOTION_RANGE

JOB_ID = r"[0-9a-f]{32}"


class ClipButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"svd:(?P<action>reroll|more|less|delete|cancel):(?P<job_id>{JOB_ID})",
):
    """One button; what it does is in its custom_id."""

    STYLES: ClassVar[dict[str, tuple[str, str, discord.ButtonStyle]]] = {
        "reroll": ("Re-roll", "🎲", discord.ButtonStyle.primary),
        "more": ("More motion", "⏫", discord.ButtonStyle.secondary),
        "less": ("Less motion", "⏬", discord.ButtonStyle.secondary),
        "delete": ("Delete", "🗑️", discord.ButtonStyle.danger),
        "cancel": ("Cancel", "✖️", discord.ButtonStyle.danger),
    }

    def __init__(self, action: str, job_id: str) -> None:
        label, emoji, style = self.STYLES[action]
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=f"svd:{action}:{job_id}"
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ClipButton:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        # The handlers live on the bot, built with the service; imported lazily to avoid a cycle.
        from bot.client import SvdBot

        bot = cast(SvdBot, interaction.client)
        await bot.handle_button(interaction, self.action, self.job_id)


def clip_view(job_id: str, *, motion: int | None = None) -> discord.ui.View:
    """Re-roll, More / Less motion, Delete; a motion button is greyed out at the end of the
    range (`motion`: the clip's motion bucket), where it could only repeat the same motion."""
    low, high = MOTION_RANGE
    ends = {
        "more": motion is not None and motion >= high,
        "less": motion is not None and motion <= low,
    }
    view = discord.ui.View(timeout=None)
    for action in ("reroll", "more", "less", "delete"):
        button = ClipButton(action, job_id)
        button.item.disabled = ends.get(action, False)
        view.add_item(button)
    return view


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ClipButton("cancel", job_id))
    return view

"""Buttons on progress messages and clips, and the picture picker of Apps → Animate.

The buttons are dynamic items: the custom_id carries the action and the job id, so a click
after a restart is still understood without any view having been re-attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, cast

import discord

from bot.pictures import FoundPicture, Picture
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


def clip_view(
    job_id: str, *, motion: int | None = None, picture_gone: bool = False
) -> discord.ui.View:
    """Re-roll, More / Less motion, Delete; a motion button is greyed out at the end of the
    range (`motion`: the clip's motion bucket), where it could only repeat the same motion, and
    all three once the picture is no longer kept (`picture_gone`): only Delete still works."""
    low, high = MOTION_RANGE
    ends = {
        "reroll": picture_gone,
        "more": picture_gone or (motion is not None and motion >= high),
        "less": picture_gone or (motion is not None and motion <= low),
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


# Discord allows 25 options in a select menu.
MAX_PICTURE_CHOICES = 25
# Within the 15 minutes the first interaction's token lasts, so the menu can still be closed.
PICK_TIMEOUT_SECONDS = 600.0
PICK_ONE = "That message has {count} pictures. Which one shall I animate?"
PICK_EXPIRED = "This menu has expired. Use **Animate** on the message again."
PICKED_ALREADY = "You already picked a picture from this menu. Use **Animate** again for another."
PICK_ID = "svd:pick:"
# Menus this process made, by token, and when: a pick on any other was made before a restart.
# Kept well past their timeout (a menu that could not be closed then can still be picked).
PICK_TOKENS_KEPT_SECONDS = 4 * PICK_TIMEOUT_SECONDS


@dataclass(frozen=True)
class MenuState:
    """A picture menu this process made: when, and how it ended (None while it is open)."""

    made: float
    ended: Literal["picked", "expired"] | None = None


PictureMenus = dict[str, MenuState]


class StalePictureMenu(
    discord.ui.DynamicItem[discord.ui.Select[Any]], template=rf"{PICK_ID}(?P<token>[0-9a-f]{{16}})"
):
    """A pick on a picture menu no `PicturePicker` listens to any more, answered instead of
    Discord's "This interaction failed": one made before a restart (its pictures are no longer
    known) or one that timed out says so and closes; a second pick on one already picked from
    (discord.py drops a view once it stops) is told so. (A live menu's pick is its picker's:
    this item sees the token and leaves it alone.)"""

    def __init__(self, token: str, select: discord.ui.Select[Any] | None = None) -> None:
        super().__init__(select or discord.ui.Select(custom_id=f"{PICK_ID}{token}"))
        self.token = token

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> StalePictureMenu:
        select = item if isinstance(item, discord.ui.Select) else None
        return cls(match["token"], select)

    async def callback(self, interaction: discord.Interaction) -> None:
        from bot.client import SvdBot

        state = cast(SvdBot, interaction.client).picture_menus.get(self.token)
        if state is not None and state.ended is None:
            return
        with contextlib.suppress(discord.HTTPException):
            if state is not None and state.ended == "picked":
                await interaction.response.send_message(PICKED_ALREADY, ephemeral=True)
            else:
                await interaction.response.edit_message(content=PICK_EXPIRED, view=None)


class PicturePicker(discord.ui.View):
    """An ephemeral menu of a message's pictures; one pick makes one clip, then the menu goes.
    Not persistent: the pictures' signed links are in memory only, and a few minutes is what a
    member needs to pick."""

    def __init__(
        self,
        found: Sequence[FoundPicture],
        on_pick: Callable[[discord.Interaction, Picture], Awaitable[None]],
        *,
        asked: discord.Interaction,
        menus: PictureMenus,
        timeout: float = PICK_TIMEOUT_SECONDS,
    ) -> None:
        """`menus`: this process's menus (the bot's), to which this one is added."""
        super().__init__(timeout=timeout)
        now = time.monotonic()
        for old in [t for t, m in menus.items() if now - m.made > PICK_TOKENS_KEPT_SECONDS]:
            del menus[old]
        token = secrets.token_hex(8)
        menus[token] = MenuState(now)
        self._menus = menus
        self._token = token
        self._total = len(found)
        self._found = list(found)[:MAX_PICTURE_CHOICES]
        self._on_pick = on_pick
        self._asked = asked
        self._select: discord.ui.Select[PicturePicker] = discord.ui.Select(
            custom_id=f"{PICK_ID}{token}",
            placeholder="Pick the picture to animate",
            options=[
                discord.SelectOption(
                    label=f"{index + 1}. {item.picture.filename}"[:100],
                    value=str(index),
                    description=item.source,
                )
                for index, item in enumerate(self._found)
            ],
        )
        self._select.callback = self._picked  # type: ignore[method-assign]
        self.add_item(self._select)

    @property
    def text(self) -> str:
        text = PICK_ONE.format(count=self._total)
        if self._total > len(self._found):
            text += f" (Discord lets me list the first {len(self._found)}.)"
        return text

    async def _picked(self, interaction: discord.Interaction) -> None:
        if self.is_finished():  # a second pick raced the first
            with contextlib.suppress(discord.HTTPException):
                await interaction.response.send_message(PICKED_ALREADY, ephemeral=True)
            return
        self.stop()
        self._ended("picked")
        chosen = self._found[int(self._select.values[0])].picture
        # The menu closes while the clip is asked for (whose answer must reach Discord within
        # 3 s of the pick, so it does not wait for this), not after its download.
        closing = asyncio.ensure_future(self._close(chosen.filename))
        try:
            await self._on_pick(interaction, chosen)
        finally:
            await closing

    async def _close(self, filename: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await self._asked.edit_original_response(
                content=f"Picked **{discord.utils.escape_markdown(filename)}**.", view=None
            )

    def _ended(self, how: Literal["picked", "expired"]) -> None:
        # discord.py forgets a stopped view: later picks reach StalePictureMenu, which answers.
        state = self._menus.get(self._token)
        if state is not None:
            self._menus[self._token] = replace(state, ended=how)

    async def on_timeout(self) -> None:
        self._ended("expired")
        with contextlib.suppress(discord.HTTPException):
            await self._asked.edit_original_response(content=PICK_EXPIRED, view=None)

"""The buttons under a clip."""

from __future__ import annotations

import discord

from bot.views import clip_view


def _disabled(view: discord.ui.View) -> dict[str, bool]:
    """What Discord is sent: each button's action and whether it is greyed out."""
    buttons = [button for row in view.to_components() for button in row["components"]]
    return {button["custom_id"].split(":")[1]: button.get("disabled", False) for button in buttons}


async def test_motion_buttons_are_greyed_out_only_at_the_end_of_the_range() -> None:
    job_id = "a" * 32
    assert not any(_disabled(clip_view(job_id, motion=127)).values())
    assert not any(_disabled(clip_view(job_id)).values())
    most = _disabled(clip_view(job_id, motion=255))
    assert most == {"reroll": False, "more": True, "less": False, "delete": False}
    least = _disabled(clip_view(job_id, motion=0))
    assert least == {"reroll": False, "more": False, "less": True, "delete": False}

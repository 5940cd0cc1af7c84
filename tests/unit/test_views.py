"""The buttons under a clip, and the answer when a press (or a command) goes wrong."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import discord
import pytest

from bot.client import SvdBot
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


@pytest.mark.parametrize(
    ("error", "said"),
    [
        # Nothing can reach the member on an expired interaction: it is not even tried.
        (
            discord.NotFound(
                SimpleNamespace(status=404, reason="Not Found"),  # type: ignore[arg-type]
                {"code": 10062, "message": "Unknown interaction"},
            ),
            "too late",
        ),
        # discord.py retries a 5xx; the retry of an answer that landed is refused with 40060.
        # The member has the answer: "something went wrong" must not replace it.
        (
            discord.HTTPException(
                SimpleNamespace(status=400, reason="Bad Request"),  # type: ignore[arg-type]
                {"code": 40060, "message": "Interaction has already been acknowledged."},
            ),
            None,
        ),
    ],
    ids=["answered too late", "answer landed, reply lost"],
)
async def test_an_interaction_that_cannot_or_need_not_be_answered_is_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture, error: discord.HTTPException, said: str | None
) -> None:
    with caplog.at_level(logging.INFO):
        await SvdBot.reply_error(None, None, error)  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    if said is not None:
        assert said in caplog.records[0].getMessage()

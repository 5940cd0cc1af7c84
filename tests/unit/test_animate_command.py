"""The /animate definition Discord is sent: which options members see, and their choices."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
from discord import app_commands

from bot.cogs.animate import build_animate_command


class NoCog:
    """build_animate_command only keeps the cog for its callback, which these tests never run."""


def options_of(models: list[str]) -> dict[str, Any]:
    command = build_animate_command(NoCog(), models)  # type: ignore[arg-type]
    return {param.name: param for param in command.parameters}


def test_one_model_shows_no_model_option() -> None:
    options = options_of(["stabilityai/stable-video-diffusion-img2vid-xt"])
    assert "model" not in options
    assert list(options)[:2] == ["image", "motion"] and options["image"].required


def test_several_models_are_offered_by_their_short_names() -> None:
    options = options_of(["stabilityai/stable-video-diffusion-img2vid-xt", "/models/svd/"])
    assert [(c.name, c.value) for c in options["model"].choices] == [
        ("stable-video-diffusion-img2vid-xt", "stabilityai/stable-video-diffusion-img2vid-xt"),
        ("svd", "/models/svd/"),
    ]


def test_a_hub_cache_snapshot_is_named_for_its_model_and_like_names_are_told_apart() -> None:
    cache = "/cache/huggingface/hub/models--stabilityai--stable-video-diffusion-img2vid"
    options = options_of(
        [
            f"{cache}-xt/snapshots/9cf024d5bfa8f56622af86c884f26a52f6676f2e",
            f"{cache}/snapshots/43ae2d1c3f3b1e2e5f5c3a1e0d1f2e3a4b5c6d7e/",
            "/models/a/svd",
            "/models/b/svd",
        ]
    )
    assert [c.name for c in options["model"].choices] == [
        "stable-video-diffusion-img2vid-xt",
        "stable-video-diffusion-img2vid",
        "svd (1)",
        "svd (2)",
    ]


def test_quality_is_best_or_a_labelled_draft() -> None:
    quality = options_of(["m"])["quality"]
    assert not quality.required
    assert [c.value for c in quality.choices] == ["best", "draft"]
    draft = quality.choices[1].name
    assert "faster" in draft and "less detail" in draft


class RecordingCog:
    def __init__(self) -> None:
        self.models: list[str | None] = []

    async def animate(self, interaction: Any, image: Any, **options: Any) -> None:
        self.models.append(options["model"])


def test_a_model_path_past_discords_100_characters_is_offered_and_picked_back() -> None:
    # A hub snapshot folder is about 130 characters; Discord refuses a longer choice value and
    # `sync` failed with 400 Invalid Form Body.
    snapshot = (
        "/cache/huggingface/hub/models--stabilityai--stable-video-diffusion-img2vid/snapshots/"
    )
    snapshot += "9cf024d5bfa8f56622af86c884f26a52f6676f2e"
    assert len(snapshot) > 100
    cog = RecordingCog()
    command = build_animate_command(cog, ["stabilityai/x", snapshot])  # type: ignore[arg-type]
    (option,) = [p for p in command.parameters if p.name == "model"]
    values = [str(c.value) for c in option.choices]
    assert values[0] == "stabilityai/x" and all(len(v) <= 100 for v in values)
    for value in (*values, "stabilityai/gone"):
        asyncio.run(command.callback(object(), object(), model=value))  # type: ignore[call-arg]
    assert cog.models == ["stabilityai/x", snapshot, "stabilityai/gone"]


def test_animate_is_offered_in_servers_only() -> None:
    # `contexts` is what Discord reads now (dm_permission is deprecated); null offered it in DMs.
    command = build_animate_command(NoCog(), ["m"])  # type: ignore[arg-type]
    payload = command.to_dict(
        app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    )
    assert payload["contexts"] == [0] and payload["dm_permission"] is False

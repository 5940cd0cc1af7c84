"""The /animate definition Discord is sent: which options members see, and their choices."""

from __future__ import annotations

from typing import Any

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


def test_quality_is_best_or_a_labelled_draft() -> None:
    quality = options_of(["m"])["quality"]
    assert not quality.required
    assert [c.value for c in quality.choices] == ["best", "draft"]
    draft = quality.choices[1].name
    assert "faster" in draft and "less detail" in draft

"""What a member may ask of one clip: `AnimateOptions`, its ranges and the named presets.

Field names match the `StableVideoDiffusionPipeline.__call__` keywords they feed, so the engine
passes them straight through and a reader can check them against the diffusers docs.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from generation.errors import InvalidOptions

OutputFormat = Literal["mp4", "gif"]
FORMATS: tuple[OutputFormat, ...] = ("mp4", "gif")
MAX_SEED = 2**32 - 1

Quality = Literal["best", "draft"]
# How a picture of another shape becomes 16:9 (or 9:16): cut to fill, or whole on a blurred
# backdrop (generation/images.py).
Fit = Literal["crop", "whole"]
FITS: tuple[Fit, ...] = ("crop", "whole")
# SVD's motion bucket: 0 barely moves, 255 the most it was trained on.
MOTION_RANGE = (0, 255)
# Draft quality runs the whole UNet on one step in three (DeepCache's usual interval). The cap
# is a bound, not a tuned value: past it most steps would run on stale deep features.
QUALITY_CACHE_INTERVALS: dict[Quality, int] = {"best": 1, "draft": 3}
MAX_CACHE_INTERVAL = 5


@dataclass(frozen=True)
class Preset:
    """A named choice of motion for people who don't want numbers."""

    name: str
    motion_bucket_id: int
    noise_aug_strength: float
    description: str


# Follows the seed guidance: under 100 for subtle pans; 180-200 with noise 0.1 for dramatic motion.
PRESETS: dict[str, Preset] = {
    "subtle": Preset(
        "subtle", 70, 0.02, "Gentle camera drift, the picture stays close to the original"
    ),
    "normal": Preset("normal", 127, 0.02, "The model's default amount of motion"),
    "dramatic": Preset(
        "dramatic", 190, 0.1, "Big motion; drifts further from the original picture"
    ),
}


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptions(name, f"`{name}` must be a whole number from {low} to {high}.")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value  # NaN
        or not low <= value <= high
    ):
        raise InvalidOptions(name, f"`{name}` must be a number from {low} to {high}.")


@dataclass(frozen=True)
class AnimateOptions:
    """One clip's settings; validated on construction, so an instance is always usable."""

    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    # Conditioning fps: what the model is told the clip's frame rate is (it sees fps - 1).
    fps: int = 7
    num_inference_steps: int = 25
    # None: the model's own (25 for SVD-XT, 14 for SVD).
    num_frames: int | None = None
    # None until the engine picks one; always reported back so a clip can be reproduced.
    seed: int | None = None
    # None: the engine's plan decides (speed vs memory).
    decode_chunk_size: int | None = None
    # Draft quality (generation/feature_cache.py): the whole UNet runs every `cache_interval`-th
    # step and the others reuse its deep features; 1, the default, is full quality.
    cache_interval: int = 1
    format: OutputFormat = "mp4"
    # Frame rate of the file; None: the same as the conditioning fps.
    playback_fps: int | None = None
    # Done by the encoder, not the model (no GPU time): play forwards then backwards, so the
    # loop has no jump; and twice the frames at twice the rate, the in-between ones by motion
    # interpolation.
    ping_pong: bool = False
    interpolate: bool = False
    # Done to the picture before it is kept (so Re-roll and More / Less motion reuse it).
    fit: Fit = "crop"
    # Which configured model (hub id or folder); None: the host's default.
    model: str | None = None
    preset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_int("motion_bucket_id", self.motion_bucket_id, *MOTION_RANGE)
        _check_float("noise_aug_strength", self.noise_aug_strength, 0.0, 1.0)
        _check_int("fps", self.fps, 1, 30)
        _check_int("num_inference_steps", self.num_inference_steps, 1, 50)
        if self.num_frames is not None:
            _check_int("num_frames", self.num_frames, 2, 64)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        if self.decode_chunk_size is not None:
            _check_int("decode_chunk_size", self.decode_chunk_size, 1, 64)
        _check_int("cache_interval", self.cache_interval, 1, MAX_CACHE_INTERVAL)
        if self.format not in FORMATS:
            raise InvalidOptions("format", "`format` must be `mp4` or `gif`.")
        if self.playback_fps is not None:
            _check_int("playback_fps", self.playback_fps, 1, 60)
        if self.fit not in FITS:
            raise InvalidOptions("fit", "`fit` must be `crop` or `whole`.")
        for name in ("ping_pong", "interpolate"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptions(name, f"`{name}` must be true or false.")
        if self.preset is not None and self.preset not in PRESETS:
            names = ", ".join(PRESETS)
            raise InvalidOptions("preset", f"`preset` must be one of: {names}.")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AnimateOptions:
        """Options for a preset; explicit `overrides` (e.g. a chosen motion) win over it."""
        preset = PRESETS.get(name)
        if preset is None:
            raise InvalidOptions("preset", f"`preset` must be one of: {', '.join(PRESETS)}.")
        values: dict[str, Any] = {
            "motion_bucket_id": preset.motion_bucket_id,
            "noise_aug_strength": preset.noise_aug_strength,
            "preset": name,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def quality(self) -> Quality:
        """What the member chose: "draft" for any feature caching, else "best"."""
        return "draft" if self.cache_interval > 1 else "best"

    @property
    def output_fps(self) -> int:
        return self.playback_fps or self.fps

    def with_seed(self, seed: int | None = None) -> AnimateOptions:
        """A copy with `seed` set: the given one, or a fresh random one."""
        return replace(self, seed=random_seed() if seed is None else seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnimateOptions:
        """A stored job's options. A preset name only labels the motion it gave: one a later
        version no longer has is dropped, not a reason to refuse (or never post) the clip."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("preset") not in PRESETS:
            values.pop("preset", None)
        return cls(**values)


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)

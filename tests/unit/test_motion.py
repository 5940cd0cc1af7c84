"""The motion measure and the "barely moves" hint, calibrated on synthetic clips."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from generation.motion import STATIC_HINT, STATIC_THRESHOLD, motion_score, static_hint


@functools.cache  # shared by several tests; never modified
def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like greyscale-and-colour texture: 1/f noise, the spectrum of natural images."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    planes = []
    for _ in range(3):
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**1.1
        plane = np.fft.irfft2(spectrum, s=(height, width))
        planes.append((plane - plane.mean()) / plane.std())
    luma = planes[0][..., None]
    colour = 0.3 * np.stack([planes[1], planes[2], -planes[1] - planes[2]], -1)
    return np.clip(128 + 45 * (luma + colour), 0, 255)


def pan(width: int, height: int, pixels_per_frame_at_1024: float, frames: int = 25) -> np.ndarray:
    """A camera pan; the speed is given for a 1024-wide clip and scaled to `width`."""
    speed = pixels_per_frame_at_1024 * width / 1024
    scene = texture(height, width + 512 * width // 1024, seed=7)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        x = i * speed
        x0, part = int(x), x - int(x)
        window = scene[:, x0 : x0 + width + 1]
        clip[i] = ((1 - part) * window[:, :-1] + part * window[:, 1:]).round()
    return clip


def still_with_noise(width: int, height: int, sigma: float, frames: int = 12) -> np.ndarray:
    """A still picture with fresh per-frame noise: the shimmer of an SVD clip that does not move."""
    rng = np.random.default_rng(3)
    picture = texture(height, width, seed=7).astype(np.float32)
    noise = rng.standard_normal((frames, height, width, 3), dtype=np.float32) * sigma
    return np.clip(picture[None] + noise, 0, 255).astype(np.uint8)


def test_identical_frames_score_zero_and_get_the_hint() -> None:
    frozen = np.repeat(pan(256, 144, 0, frames=1), 14, axis=0)
    assert motion_score(frozen) == 0.0
    assert static_hint(frozen) == STATIC_HINT


def test_black_white_flashing_scores_one() -> None:
    flashing = np.zeros((6, 64, 64, 3), np.uint8)
    flashing[::2] = 255
    assert motion_score(flashing) == pytest.approx(1.0)
    assert static_hint(flashing) is None


def test_a_single_frame_has_no_motion() -> None:
    assert motion_score(np.zeros((1, 64, 64, 3), np.uint8)) == 0.0


@pytest.mark.parametrize(("width", "height"), [(1024, 576), (256, 144)])
def test_shimmer_on_a_still_picture_counts_as_static(width: int, height: int) -> None:
    clip = still_with_noise(width, height, sigma=2.0)
    assert motion_score(clip) < STATIC_THRESHOLD
    hint = static_hint(clip)
    assert hint is not None
    assert "motion:180" in hint and "noise:0.1" in hint and "dramatic" in hint


@pytest.mark.parametrize(("width", "height"), [(1024, 576), (256, 144)])
@pytest.mark.parametrize("speed", [1.0, 2.0, 8.0])
def test_a_visible_pan_is_not_static(width: int, height: int, speed: float) -> None:
    clip = pan(width, height, speed)
    assert motion_score(clip) > STATIC_THRESHOLD
    assert static_hint(clip) is None


@pytest.mark.parametrize(("width", "height"), [(1024, 576), (256, 144)])
def test_a_creeping_pan_gets_the_hint(width: int, height: int) -> None:
    # A quarter pixel a frame: 6 px over 25 frames of a 1024-wide clip.
    assert static_hint(pan(width, height, 0.25)) == STATIC_HINT


def test_score_grows_with_speed() -> None:
    scores = [motion_score(pan(512, 288, speed)) for speed in (0.25, 1.0, 4.0, 16.0)]
    assert scores == sorted(scores)
    assert scores[0] < scores[-1] / 5


def test_score_does_not_depend_on_resolution() -> None:
    big, small = motion_score(pan(1024, 576, 2.0)), motion_score(pan(256, 144, 2.0))
    assert small == pytest.approx(big, rel=0.3)


def test_threshold_is_adjustable() -> None:
    clip = pan(256, 144, 2.0)
    score = motion_score(clip)
    assert static_hint(clip, threshold=score * 1.01) == STATIC_HINT
    assert static_hint(clip, threshold=score * 0.99) is None


def test_greyscale_frames_are_accepted() -> None:
    colour = pan(256, 144, 2.0)
    grey = colour.mean(axis=-1).round().astype(np.uint8)
    assert motion_score(grey) == pytest.approx(motion_score(colour), rel=0.1)


@pytest.mark.parametrize(
    "frames", [np.zeros((3, 8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), [[0]]]
)
def test_frames_must_be_uint8(frames: object) -> None:
    with pytest.raises(ValueError, match="uint8"):
        motion_score(frames)  # type: ignore[arg-type]

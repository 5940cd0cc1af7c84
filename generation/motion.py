"""How much a clip moves, and the advice to give when it hardly does.

SVD sometimes returns a nearly still picture, mostly at low `motion_bucket_id`. The score is the
mean absolute difference between consecutive frames, measured on greyscale frames shrunk to about
128 pixels on the long side, as a fraction of full scale (0.0 = identical frames, 1.0 = black and
white swapping every frame). Shrinking first makes it independent of the clip's resolution and
deaf to the per-pixel shimmer SVD adds, while a camera move still shows.
"""

from __future__ import annotations

import numpy as np

# Calibrated on synthetic clips (tests/unit/test_motion.py): a photo-like texture panning by
# 0.5 px a frame at 1024 px wide (12 px over 25 frames: barely moving) scores about 0.0048, 1 px
# about 0.010, 2 px about 0.019; a still picture with per-frame noise of sigma 3 scores about
# 0.001 at 1024 px (0.0045 at 256 px, where shrinking averages fewer pixels).
STATIC_THRESHOLD = 0.005
STATIC_HINT = (
    "The clip barely moves. Try `motion:180` or higher with `noise:0.1`, or the `dramatic` preset."
)
# The long side the frames are shrunk to before comparing them.
MEASURE_SIDE = 128
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights


def motion_score(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, 0.0 to 1.0 (see the module docstring).

    `frames` is uint8, shape (n, height, width, 3) or (n, height, width); a single frame scores 0.
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError("frames must be uint8 with shape (n, height, width[, 3])")
    if len(frames) < 2:
        return 0.0
    small = np.stack([_shrink(frame) for frame in frames])
    return float(np.abs(np.diff(small, axis=0)).mean() / 255.0)


def static_hint(frames: np.ndarray, threshold: float = STATIC_THRESHOLD) -> str | None:
    """Advice for the user when the clip scores under `threshold`; None when it moves enough."""
    return STATIC_HINT if motion_score(frames) < threshold else None


def _shrink(frame: np.ndarray) -> np.ndarray:
    """Greyscale, block-averaged so that the long side is about `MEASURE_SIDE` pixels."""
    grey = frame.astype(np.float32) @ _LUMA if frame.ndim == 3 else frame.astype(np.float32)
    height, width = grey.shape
    factor = max(1, max(height, width) // MEASURE_SIDE)
    rows, cols = height // factor, width // factor
    blocks = grey[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    return blocks.mean(axis=(1, 3))

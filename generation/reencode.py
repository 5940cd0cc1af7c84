"""Shrink a finished clip to a smaller byte budget, for when Discord refuses an upload (413) that
the interaction's limit said would fit. The frames come back from the file itself, so nothing
but the file needs to be kept."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from generation.encode import encode_clip
from generation.options import OutputFormat

DEFAULT_FPS = 7.0


def read_frames(path: Path) -> tuple[np.ndarray, float]:
    """The clip's frames (uint8 RGB, (n, h, w, 3)) and its frame rate."""
    frames = iio.imread(path, index=None)
    if frames.ndim == 3:  # a single frame
        frames = frames[None]
    frames = np.ascontiguousarray(frames[..., :3])
    meta = iio.immeta(path)
    fps = float(meta.get("fps") or 0.0)
    if not fps and meta.get("duration"):
        # GIF metadata gives the frame duration in milliseconds.
        fps = 1000.0 / float(meta["duration"])
    return frames, fps or DEFAULT_FPS


def reencode_file(path: Path, max_bytes: int) -> Path:
    """Encode `path` again to fit `max_bytes`; returns the new file beside it. Blocking."""
    frames, fps = read_frames(path)
    fmt: OutputFormat = "gif" if path.suffix.lower() == ".gif" else "mp4"
    target = path.with_name(f"{path.stem}.{max_bytes}{path.suffix}")
    clip = encode_clip(frames, target, format=fmt, fps=fps, max_bytes=max_bytes)
    return clip.path

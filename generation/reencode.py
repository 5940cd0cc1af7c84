"""Shrink a finished clip to a smaller byte budget, for when Discord refuses an upload (413) that
the interaction's limit said would fit. The frames come back from the file itself, so nothing
but the file needs to be kept."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageSequence

from generation.encode import FFMPEG_TIMEOUT_S, encode_clip
from generation.options import OutputFormat

DEFAULT_FPS = 7.0


def read_frames(path: Path) -> tuple[np.ndarray, float]:
    """The clip's frames (uint8 RGB, (n, h, w, 3)) and its frame rate, MP4 or GIF."""
    if path.suffix.lower() == ".gif":
        return _read_gif(path)
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    # `ffmpeg -i` alone describes the streams on stderr (and exits non-zero: no output named).
    # Time limits: a hung ffmpeg would hold this clip's delivery (and its thread) for ever.
    info = subprocess.run(
        [exe, "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        timeout=FFMPEG_TIMEOUT_S,
    )
    size = re.search(r"Video: .*?, (\d+)x(\d+)", info.stderr)
    rate = re.search(r"([\d.]+) fps", info.stderr)
    if size is None:
        raise ValueError(f"{path} has no video stream")
    width, height = int(size[1]), int(size[2])
    decoded = subprocess.run(
        [exe, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
        timeout=FFMPEG_TIMEOUT_S,
    ).stdout
    frames = np.frombuffer(decoded, np.uint8).reshape(-1, height, width, 3)
    return frames, float(rate[1]) if rate else DEFAULT_FPS


def _read_gif(path: Path) -> tuple[np.ndarray, float]:
    """A GIF writer merges identical neighbouring frames into one that shows longer (a clip that
    starts still): each is repeated for as long as it shows, at the shortest frame's rate, so
    that a re-encode keeps the timing and the frame count."""
    with Image.open(path) as image:
        durations = []
        frames = []
        for frame in ImageSequence.Iterator(image):
            durations.append(frame.info.get("duration", 0) or 0)
            frames.append(np.asarray(frame.convert("RGB")))
    shown = [d for d in durations if d > 0]
    if not shown:
        return np.stack(frames), DEFAULT_FPS
    shortest = min(shown)
    repeats = [max(1, round(d / shortest)) for d in durations]
    return np.repeat(np.stack(frames), repeats, axis=0), 1000.0 / shortest


def reencode_file(path: Path, max_bytes: int) -> Path:
    """Encode `path` again to fit `max_bytes`; returns the new file beside it. Blocking."""
    frames, fps = read_frames(path)
    fmt: OutputFormat = "gif" if path.suffix.lower() == ".gif" else "mp4"
    target = path.with_name(f"{path.stem}.{max_bytes}{path.suffix}")
    return encode_clip(frames, target, format=fmt, fps=fps, max_bytes=max_bytes).path

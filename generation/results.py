"""The values that cross the generation core's seams: progress, a generated clip, an encoded file,
and the `Engine` protocol that the real SVD engine and the test fakes both satisfy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from generation.options import AnimateOptions, OutputFormat

Phase = Literal["loading", "denoising", "decoding", "encoding"]


@dataclass(frozen=True)
class Progress:
    """Where a running job is: `step` of `total` within `phase`."""

    phase: Phase
    step: int = 0
    total: int = 0


@dataclass(frozen=True)
class GenerationResult:
    """What the engine made of one image: frames plus what a user may want to know about it."""

    # uint8 RGB frames, shape (frames, height, width, 3).
    frames: np.ndarray
    seed: int
    model: str
    # The memory plan that produced the frames ("full", "offload", ...).
    plan: str
    seconds: float
    # The plan it started with when an out-of-memory error made it step down; None otherwise.
    fallback_from: str | None = None
    # Seconds spent loading or switching the model for this clip (0 when it was resident).
    load_seconds: float = 0.0
    # Advice for the user, e.g. how to get more motion from a nearly static clip.
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncodedClip:
    """A finished file on disk, guaranteed to fit the byte budget it was encoded for."""

    path: Path
    format: OutputFormat
    size_bytes: int
    width: int
    height: int
    frame_count: int
    fps: float
    seconds: float
    # True when the encoder had to lower quality, scale or colours to fit the budget.
    reduced: bool = False


OnStep = Callable[[Progress], None]
ShouldCancel = Callable[[], bool]


class Engine(Protocol):
    """Turns one prepared image into frames. Blocking: the worker calls it from its own thread."""

    def load(self) -> None:
        """Load the default model (and compile/warm up) so the first user does not pay for it."""

    def frames_for(self, model: str | None) -> int:
        """The number of frames the given (or default) model makes: 25 for SVD-XT, 14 for SVD."""

    def run(
        self,
        image: Image.Image,
        options: AnimateOptions,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> GenerationResult:
        """Generate; raise `Cancelled` within one step of `should_cancel()` turning true."""

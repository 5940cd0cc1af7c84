"""A fast stand-in for the SVD engine and the encoder, for tests and benchmarks.

`FakeEngine` satisfies the `Engine` protocol: it sleeps (or burns CPU) through fake denoising steps,
reports each one, honours cancel within a step like the real engine, and returns real frames. It
also counts what a test wants to check: runs, steps taken after a cancel was requested, and how
many runs ever overlapped (the worker must never run two at once).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from generation.errors import Cancelled
from generation.options import AnimateOptions, OutputFormat
from generation.results import EncodedClip, GenerationResult, OnStep, Progress, ShouldCancel

# How the fakes spend their time: asleep; busy on the CPU with the GIL released, as torch kernels
# and ffmpeg are; or busy in pure Python holding the GIL (the worst case for the event loop).
Work = Literal["sleep", "cpu", "python"]
_BLOCK = bytes(256 * 1024)


def burn(seconds: float, work: Work) -> None:
    if seconds <= 0:
        return
    if work == "sleep":
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if work == "cpu":
            hashlib.sha256(_BLOCK)  # hashlib releases the GIL for large inputs


def fake_frames(count: int, width: int, height: int, seed: int) -> np.ndarray:
    """`count` uint8 RGB frames of a gradient that moves a few pixels per frame."""
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i, :, :, 0] = (x + 4 * i + seed % 256) % 256
        frames[i, :, :, 1] = (y + 2 * i) % 256
        frames[i, :, :, 2] = ((x + y) // 2 + 3 * i) % 256
    return frames


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like colour texture: 1/f noise (the spectrum of natural images), smoother colour."""
    rng = np.random.default_rng(seed)

    def field(alpha: float) -> np.ndarray:
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        f = np.hypot(fx, fy)
        f[0, 0] = 1.0
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**alpha
        plane = np.fft.irfft2(spectrum, s=(height, width))
        return (plane - plane.mean()) / plane.std()

    luma, cb, cr = 128 + 45 * field(1.1), 25 * field(1.6), 25 * field(1.6)
    rgb = np.stack([luma + 1.4 * cr, luma - 0.34 * cb - 0.71 * cr, luma + 1.77 * cb], -1)
    return np.clip(rgb, 0, 255)


def moving_clip(
    frames: int = 25, width: int = 1024, height: int = 576, speed: float = 4.0, seed: int = 0
) -> np.ndarray:
    """A camera panning over the texture by `speed` pixels a frame, with a little vertical sway."""
    scene = texture(height + 32, width + int(frames * speed) + 8, seed)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        x = i * speed
        x0 = int(x)
        y = int(16 + 8 * np.sin(i / 4))
        # Sub-pixel pans blend neighbouring columns, so slow motion stays smooth.
        part = x - x0
        window = scene[y : y + height, x0 : x0 + width + 1]
        clip[i] = ((1 - part) * window[:, :-1] + part * window[:, 1:]).round()
    return clip


@dataclass
class FakeEngine:
    step_seconds: float = 0.002
    frames: int = 14
    load_seconds: float = 0.0
    decode_seconds: float = 0.0
    # The event-loop benchmark's stand-in load uses "cpu" or "python" instead of sleeping.
    work: Work = "sleep"
    # Called at the start of each run; an exception it returns is raised (a failing job).
    fail_when: Callable[[AnimateOptions], BaseException | None] | None = None
    plan: str = "fake"
    loads: int = 0
    runs: int = 0
    steps_run: int = 0
    # Steps that ran while a cancel was already requested: at most one per cancelled run.
    steps_after_cancel: int = 0
    max_concurrent: int = 0
    threads: set[str] = field(default_factory=set)
    _active: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def load(self) -> None:
        self._work(self.load_seconds)
        with self._lock:
            self.loads += 1

    def frames_for(self, model: str | None) -> int:
        return self.frames

    def run(
        self,
        image: Image.Image,
        options: AnimateOptions,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> GenerationResult:
        with self._lock:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
            self.runs += 1
            self.threads.add(threading.current_thread().name)
        try:
            return self._run(image, options, on_step, should_cancel)
        finally:
            with self._lock:
                self._active -= 1

    def _run(
        self,
        image: Image.Image,
        options: AnimateOptions,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> GenerationResult:
        started = time.perf_counter()
        if self.fail_when is not None:
            error = self.fail_when(options)
            if error is not None:
                raise error
        seed = options.seed if options.seed is not None else secrets.randbelow(2**32)
        total = options.num_inference_steps
        for step in range(1, total + 1):
            # Like the real engine's callback_on_step_end: the flag is read between steps.
            if should_cancel():
                raise Cancelled()
            self._work(self.step_seconds)
            with self._lock:
                self.steps_run += 1
                if should_cancel():
                    self.steps_after_cancel += 1
            on_step(Progress("denoising", step, total))
        if should_cancel():
            raise Cancelled()
        on_step(Progress("decoding", 0, 1))
        self._work(self.decode_seconds)
        # Frames come out at the prepared image's size, as the real pipeline's do.
        width, height = image.size
        count = options.num_frames or self.frames
        return GenerationResult(
            frames=fake_frames(count, width, height, seed),
            seed=seed,
            model=options.model or "fake",
            plan=self.plan,
            seconds=time.perf_counter() - started,
        )

    def _work(self, seconds: float) -> None:
        burn(seconds, self.work)


@dataclass
class FakeEncoder:
    """Writes the frames as raw bytes where the clip would go, after `seconds` of pretend work.
    Same call signature as `generation.encode.encode_clip`."""

    seconds: float = 0.0
    work: Work = "sleep"
    calls: list[Path] = field(default_factory=list)

    def __call__(
        self,
        frames: np.ndarray,
        path: Path,
        *,
        format: OutputFormat,
        fps: float,
        max_bytes: int,
        interpolate: bool = False,
        ping_pong: bool = False,
    ) -> EncodedClip:
        burn(self.seconds, self.work)
        # The frame counts and rate the real encoder gives (see generation/encode.py).
        if interpolate and len(frames) > 1:
            frames = np.repeat(frames, 2, axis=0)[:-1]
            fps *= 2
        if ping_pong:
            frames = np.concatenate([frames, frames[-2:0:-1]])
        path.write_bytes(frames.tobytes()[:max_bytes])
        self.calls.append(path)
        count, height, width = frames.shape[:3]
        return EncodedClip(
            path=path,
            format=format,
            size_bytes=path.stat().st_size,
            width=width,
            height=height,
            frame_count=count,
            fps=fps,
            seconds=count / fps,
        )

"""`svd-animate`: one picture to one clip from the command line, without Discord.

It is how a host tries the GPU (and the model download) before connecting the bot:

    svd-animate photo.jpg -o clip.mp4 --motion 180 --seed 1

Progress goes to stderr (denoising steps, then decoding, then encoding); the summary (seed,
plan, seconds, file size, hints) to stdout. Bad input is one line and exit code 2; a failed
generation is one line and exit code 1 (`--verbose` adds the engine's log and tracebacks);
Ctrl-C stops at once (exit code 130).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from generation.errors import (
    Cancelled,
    GenerationError,
    GenerationFailed,
    GPUUnusable,
    InvalidOptions,
)
from generation.options import FORMATS, PRESETS, QUALITY_CACHE_INTERVALS, AnimateOptions
from generation.plans import MEMORY_MODES, PlanSettings
from generation.results import Progress

DEFAULT_MODEL = "stabilityai/stable-video-diffusion-img2vid-xt"
MIB = 1024 * 1024
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svd-animate",
        description="Turn a still picture into a short clip with Stable Video Diffusion.",
    )
    parser.add_argument("image", type=Path, help="PNG, JPEG, WebP, GIF, HEIC or AVIF picture")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="file to write (default: the picture's name with .mp4 or .gif)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named amount of motion")
    parser.add_argument("--motion", type=int, help="motion bucket 0-255 (default 127)")
    parser.add_argument("--noise", type=float, help="noise augmentation 0.0-1.0 (default 0.02)")
    parser.add_argument("--fps", type=int, help="conditioning frame rate 1-30 (default 7)")
    parser.add_argument("--playback-fps", type=int, help="the file's frame rate (default: --fps)")
    parser.add_argument("--steps", type=int, help="denoising steps 1-50 (default 25)")
    parser.add_argument(
        "--quality",
        choices=tuple(QUALITY_CACHE_INTERVALS),
        default="best",
        help="draft reuses deep features across steps: faster, a little less detail",
    )
    parser.add_argument("--frames", type=int, help="frames (default: the model's own)")
    parser.add_argument("--seed", type=int, help="seed for a reproducible clip (default: random)")
    parser.add_argument("--decode-chunk", type=int, help="frames the VAE decodes at once")
    parser.add_argument("--format", choices=FORMATS, help="mp4 or gif (default: from -o, else mp4)")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id or local folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=1024,
        help="the clip's long side, a multiple of 64 (default 1024)",
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--memory-mode",
        choices=MEMORY_MODES,
        default="auto",
        help="auto picks from free VRAM, never fast: compiling takes minutes (default auto)",
    )
    parser.add_argument(
        "--max-mb", type=float, default=10.0, help="the file's size limit in MiB (default 10)"
    )
    parser.add_argument("--cache-dir", type=Path, help="where hub downloads are kept")
    parser.add_argument("--offline", action="store_true", help="use only files already here")
    parser.add_argument(
        "--interpolate", action="store_true", help="double the frame rate (smoother)"
    )
    parser.add_argument("--ping-pong", action="store_true", help="play forwards then backwards")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the engine does (and tracebacks)"
    )
    return parser


class ProgressLine:
    """One status line on stderr: a bar that redraws in place on a terminal, or a line per
    phase (and per quarter of the steps) when stderr is a file or a pipe."""

    WIDTH = 24

    def __init__(self, stream: TextIO, *, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._phase: str | None = None
        self._started = time.perf_counter()
        self._last_quarter = -1

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        new_phase = progress.phase != self._phase
        if new_phase:
            if self._phase is not None and self.tty:
                self.stream.write("\n")
            self._phase = progress.phase
            self._started = time.perf_counter()
            self._last_quarter = -1
        line = self._render(progress)
        if self.tty:
            self.stream.write("\r" + line)
        else:
            quarter = 4 * progress.step // progress.total if progress.total else 0
            if not new_phase and quarter == self._last_quarter:
                return
            self._last_quarter = quarter
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._phase is not None:
            self.stream.write("\n")
            self.stream.flush()
        self._phase = None

    def _render(self, progress: Progress) -> str:
        elapsed = time.perf_counter() - self._started
        label = f"{progress.phase:<10}"
        if not progress.total:
            return f"{label} ... {elapsed:5.1f} s"
        filled = round(self.WIDTH * progress.step / progress.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{label} [{bar}] {progress.step}/{progress.total} {elapsed:5.1f} s"


def _options(args: argparse.Namespace, output_format: str) -> AnimateOptions:
    values: dict[str, Any] = {
        "motion_bucket_id": args.motion,
        "noise_aug_strength": args.noise,
        "fps": args.fps,
        "playback_fps": args.playback_fps,
        "num_inference_steps": args.steps,
        "num_frames": args.frames,
        "seed": args.seed,
        "decode_chunk_size": args.decode_chunk,
        "cache_interval": QUALITY_CACHE_INTERVALS[args.quality],
        "format": output_format,
    }
    given = {k: v for k, v in values.items() if v is not None}
    if args.preset:
        return AnimateOptions.from_preset(args.preset, **given)
    return AnimateOptions(**given)


def _output(args: argparse.Namespace) -> tuple[Path, str]:
    output_format = args.format
    if output_format is None:
        output_format = "gif" if args.output and args.output.suffix.lower() == ".gif" else "mp4"
    path = args.output or args.image.with_suffix(f".{output_format}")
    return path, output_format


def _fail(stream: TextIO, message: str, code: int) -> int:
    stream.write(f"svd-animate: {message}\n")
    return code


def _cause(exc: BaseException) -> str:
    """The first line of the underlying error, for the host (the CLI user is the host)."""
    cause = exc.__cause__
    if cause is None:
        return ""
    first = str(cause).strip().splitlines()
    return f" ({type(cause).__name__}: {first[0]})" if first else f" ({type(cause).__name__})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `svd-animate`; returns the exit code."""
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        # The one-line errors below say what went wrong; without this, Python's last-resort
        # handler would print the engine's logged tracebacks too.
        logging.getLogger("generation").addHandler(logging.NullHandler())
    path, output_format = _output(args)
    try:
        options = _options(args, output_format)
    except InvalidOptions as exc:
        return _fail(err, exc.user_message, EXIT_USAGE)
    if args.resolution < 256 or args.resolution % 64:
        return _fail(err, "--resolution must be a multiple of 64 from 256 up.", EXIT_USAGE)
    if args.max_mb <= 0:
        return _fail(err, "--max-mb must be more than 0.", EXIT_USAGE)
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        return _fail(err, f"cannot read {args.image}: {exc.strerror or exc}", EXIT_USAGE)
    if not path.parent.is_dir():
        return _fail(err, f"the folder {path.parent} does not exist.", EXIT_USAGE)

    # Imported here so that `--help` and bad input answer at once, without loading torch.
    from generation.encode import encode_clip
    from generation.engine import SVDEngine, WarmUp
    from generation.images import ImageLimits, fit_image, load_image
    from generation.models import quiet_libraries

    quiet_libraries(downloads=not args.quiet)

    try:
        picture = load_image(data, ImageLimits())
    except GenerationError as exc:
        return _fail(err, exc.user_message, EXIT_USAGE)
    for note in picture.notes:
        err.write(f"note: {note}\n")
    image = fit_image(picture.image, args.resolution)

    progress = ProgressLine(err, enabled=not args.quiet)
    try:
        engine = SVDEngine(
            [args.model],
            device=args.device,
            memory_mode=args.memory_mode,
            resolution=args.resolution,
            cache_dir=args.cache_dir,
            local_files_only=args.offline,
            # One clip does not pay back minutes of compiling; --memory-mode fast still can,
            # for this clip's shape alone (not both orientations, then this one again).
            plan_settings=PlanSettings(auto_compile=False),
            warm_up=WarmUp(
                ((image.width, image.height),), options.num_frames, options.decode_chunk_size
            ),
        )
        progress(Progress("loading"))
        load_started = time.perf_counter()
        engine.load()
        load_seconds = time.perf_counter() - load_started
        # Ctrl-C raises KeyboardInterrupt in this thread, which runs the engine: it stops at once.
        result = engine.run(image, options, progress, lambda: False)
        progress(Progress("encoding"))
        clip = encode_clip(
            result.frames,
            path,
            format=options.format,
            fps=options.output_fps,
            max_bytes=int(args.max_mb * MIB),
            interpolate=args.interpolate,
            ping_pong=args.ping_pong,
        )
    except (Cancelled, KeyboardInterrupt):
        progress.done()
        return _fail(err, "cancelled.", EXIT_CANCELLED)
    except InvalidOptions as exc:
        progress.done()
        return _fail(err, exc.user_message, EXIT_USAGE)
    except GPUUnusable as exc:  # its message is the bot's ("restarting"), not a script's
        progress.done()
        return _fail(
            err,
            f"the GPU failed and cannot be used again by this process: {exc.detail}",
            EXIT_FAILED,
        )
    except GenerationFailed as exc:
        progress.done()
        return _fail(err, f"{exc.user_message}{_cause(exc)}", EXIT_FAILED)
    except GenerationError as exc:
        progress.done()
        return _fail(err, exc.user_message, EXIT_FAILED)
    progress.done()

    reduced = " (quality lowered to fit)" if clip.reduced else ""
    draft = " · draft quality" if options.quality == "draft" else ""
    out.write(
        f"wrote {clip.path} ({clip.size_bytes / MIB:.2f} MiB{reduced}, {clip.frame_count} frames, "
        f"{clip.width}x{clip.height}, {clip.fps:g} fps, {clip.format})\n"
        f"seed {result.seed} · plan {result.plan}{draft} · {result.seconds:.1f} s generating · "
        f"{clip.seconds:.1f} s encoding · {load_seconds:.1f} s loading {result.model}\n"
    )
    if result.fallback_from:
        out.write(f"note: ran out of GPU memory under plan {result.fallback_from}; stepped down\n")
    for hint in result.hints:
        out.write(f"hint: {hint}\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

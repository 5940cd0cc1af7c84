"""Frames to a file people can watch: MP4 (H.264) or GIF, guaranteed to fit a byte budget.

Blocking: ffmpeg runs as a subprocess (the one imageio-ffmpeg ships), so callers on an event loop
run `encode_clip` in a thread. Fitting the budget goes from the cheapest loss to the dearest and
never drops the clip: MP4 lowers its quality target (x264's CRF, and with it the bitrate) towards
the budget, then the size; GIF lowers the size, then the colours. Only when even the smallest
version is too big does it give up, with `GenerationFailed(reason="too_large")`.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from generation.errors import DiskFull, GenerationFailed, is_disk_full
from generation.options import OutputFormat
from generation.results import EncodedClip

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # Discord's per-file limit for members without Nitro
# x264's quality target for the first try: visually lossless for SVD's smooth frames, and a
# 25-frame 1024x576 clip comes out well under 1 MB, so a 10 MB budget rarely needs more tries.
MP4_CRF = 18
MP4_PRESET = "medium"
# x264's lowest quality, and how many encodes one size may take while searching for the CRF.
MP4_MAX_CRF = 51
MP4_CRF_TRIES = 5
# Each smaller MP4 try has sides this fraction of the previous one's; a smaller GIF try has sides
# at most GIF_SCALE_STEP of the previous (less when the overshoot predicts it must).
SCALE_STEP = 0.75
GIF_SCALE_STEP = 0.9
# Never scale below this short side: smaller than a thumbnail is no longer the clip.
MIN_SHORT_SIDE = 64
GIF_COLOURS = (256, 128, 64, 32)
# Browsers play GIF delays under 2/100 s as 1/10 s, so 50 fps is the fastest a GIF can go.
GIF_MIN_DELAY_CS = 2
# Pixels fed to palettegen: a subsample of every frame; the palette hardly changes, the time does.
PALETTE_SAMPLE_PIXELS = 1_000_000
FFMPEG_TIMEOUT_S = 300.0

TOO_LARGE_MESSAGE = (
    "The clip could not be made small enough for the {limit} upload limit, even at its lowest "
    "size and quality."
)
TOO_LARGE_GIF_ADVICE = " Try MP4 instead: it is many times smaller than a GIF."
ENCODE_FAILED_MESSAGE = "Something went wrong while saving the clip as a video. Please try again."


class EncodeFailed(GenerationFailed):
    """ffmpeg failed; `detail` holds the end of its error output for the logs (not the user)."""

    def __init__(self, detail: str, *, reason: str = "encode") -> None:
        super().__init__(ENCODE_FAILED_MESSAGE, reason=reason)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.user_message} [ffmpeg: {self.detail}]"


@dataclass(frozen=True)
class _Attempt:
    """One way of writing the clip: its size and what it cost in quality."""

    size_bytes: int
    width: int
    height: int
    reduced: bool
    # MP4: the quality target it was written with (two tries of one size differ in it).
    crf: int | None = None


def encode_clip(
    frames: np.ndarray,
    path: Path,
    *,
    format: OutputFormat,
    fps: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    interpolate: bool = False,
    ping_pong: bool = False,
    ffmpeg: str | None = None,
    timeout_s: float = FFMPEG_TIMEOUT_S,
) -> EncodedClip:
    """Write `frames` (uint8 RGB, shape (n, height, width, 3)) to `path`, at most `max_bytes`.

    `interpolate` doubles the frame rate with motion-compensated in-between frames (2n - 1 frames
    at 2 x fps); `ping_pong` plays the clip forwards then backwards so that the loop has no jump.
    `ffmpeg` is the executable to use (default: imageio-ffmpeg's). `EncodedClip.seconds` is the
    time spent encoding. The file appears at `path` only once it fits.
    """
    _check_frames(frames)
    if format not in ("mp4", "gif"):
        raise ValueError(f"unknown format {format!r}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    started = time.perf_counter()
    exe = ffmpeg or imageio_ffmpeg.get_ffmpeg_exe()
    if interpolate and len(frames) > 1:
        frames = interpolate_frames(frames, fps, ffmpeg=exe, timeout_s=timeout_s)
        fps *= 2
    if ping_pong:
        frames = ping_pong_frames(frames)

    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if format == "mp4":
            attempt = _fit_mp4(frames, partial, fps, max_bytes, exe, timeout_s)
            played_fps = float(fps)
        else:
            delay_cs = max(GIF_MIN_DELAY_CS, round(100 / fps))
            attempt = _fit_gif(frames, partial, delay_cs, max_bytes, exe, timeout_s)
            played_fps = 100 / delay_cs
        os.replace(partial, path)
    except OSError as exc:
        # A full or read-only disk: Pillow's GIF writer and the renames raise it (ffmpeg's own
        # failure to write comes back as its exit status). An encoding failure, not the GPU's.
        log.error("could not write the clip %s: %s", path.name, exc)
        if is_disk_full(exc):
            raise DiskFull(f"writing {path}: {exc}") from exc
        raise EncodeFailed(f"writing {path.name}: {exc}", reason="disk") from exc
    finally:
        partial.unlink(missing_ok=True)
    return EncodedClip(
        path=path,
        format=format,
        size_bytes=attempt.size_bytes,
        width=attempt.width,
        height=attempt.height,
        frame_count=len(frames),
        fps=played_fps,
        seconds=time.perf_counter() - started,
        reduced=attempt.reduced,
    )


def interpolate_frames(
    frames: np.ndarray, fps: float, *, ffmpeg: str, timeout_s: float = FFMPEG_TIMEOUT_S
) -> np.ndarray:
    """Motion-compensated in-between frames (ffmpeg's minterpolate): n frames become 2n - 1.

    The originals stay at the even positions. Costly: about half a second per 1024x576 frame on
    one core, which is why it is optional.
    """
    _check_frames(frames)
    count, height, width, _ = frames.shape
    if count < 2:
        return frames
    # minterpolate needs a frame before the pair it interpolates (its first in-between is a plain
    # copy) and holds back the last frame while it looks ahead. Mirroring one frame in front and
    # repeating the last one behind lets it see real motion at the start and emit everything;
    # the two frames it makes for the mirrored one are cut off below, as is the surplus.
    padded = np.concatenate([frames[1:2], frames, frames[-1:]])
    rate = _rate(fps)
    filter_ = (
        f"minterpolate=fps={rate * 2}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1,format=rgb24"
    )
    args = [*_raw_input(width, height, rate), "-vf", filter_, "-f", "rawvideo", "-"]
    output = _run_ffmpeg(ffmpeg, args, padded, timeout_s)
    frame_bytes = height * width * 3
    wanted = 2 * count - 1
    if len(output) < (2 + wanted) * frame_bytes:
        raise EncodeFailed(
            f"minterpolate gave {len(output) // frame_bytes} frames, not {2 + wanted}"
        )
    doubled = np.frombuffer(output, np.uint8, count=(2 + wanted) * frame_bytes)
    return doubled.reshape(2 + wanted, height, width, 3)[2:]


def ping_pong_frames(frames: np.ndarray) -> np.ndarray:
    """Forwards then backwards without repeating the turning frames: 1 2 3 4 -> 1 2 3 4 3 2."""
    return np.concatenate([frames, frames[-2:0:-1]])


def _fit_mp4(
    frames: np.ndarray, out: Path, fps: float, max_bytes: int, exe: str, timeout_s: float
) -> _Attempt:
    height, width = frames.shape[1:3]
    attempt: _Attempt | None = None
    # Each try has its own file: the search may settle on one made before its last try.
    tries: dict[_Attempt, Path] = {}
    try:
        for scale in _scales(width, height, SCALE_STEP):
            size = _scaled_size(width, height, scale, even=True)

            def write(crf: int, size: tuple[int, int] = size, scale: float = scale) -> _Attempt:
                path = out.with_name(f"{out.name}.{len(tries)}")
                try:
                    _write_mp4(frames, path, fps, size, crf, exe, timeout_s)
                except BaseException:
                    path.unlink(missing_ok=True)  # what ffmpeg wrote before it failed
                    raise
                reduced = crf > MP4_CRF or scale < 1.0
                attempt = _Attempt(path.stat().st_size, *size, reduced=reduced, crf=crf)
                tries[attempt] = path
                log.info("mp4 %dx%d crf %d: %d bytes", *size, crf, attempt.size_bytes)
                return attempt

            # At full size start from the usual quality; at a smaller size (reached only when
            # even the lowest quality did not fit) start from the lowest, the likeliest to fit.
            attempt = _search_crf(write, max_bytes, MP4_CRF if scale == 1.0 else MP4_MAX_CRF)
            if attempt.size_bytes <= max_bytes:
                os.replace(tries[attempt], out)
                return attempt
    finally:
        for path in tries.values():
            path.unlink(missing_ok=True)
    assert attempt is not None  # _scales always yields at least one scale
    raise _too_large(max_bytes, attempt.size_bytes, "mp4")


def _search_crf(write: Callable[[int], _Attempt], max_bytes: int, first: int) -> _Attempt:
    """The best quality (lowest CRF, not below `MP4_CRF`) whose file fits, in a few tries.

    Lowering the quality target lowers the bitrate where it costs least: at equal size it beats
    an average-bitrate target by 2-3 dB PSNR on a 25-frame clip, where x264's bitrate control has
    too few frames to settle and overshoots. The file size falls about exponentially with the
    CRF, so each guess interpolates log(size) between the closest tries (or assumes it halves
    every 6 steps), aiming 5% under the budget. Returns the last failure when nothing fits.
    """
    tried: dict[int, _Attempt] = {}
    crf = first
    for _ in range(MP4_CRF_TRIES):
        tried[crf] = write(crf)
        fits = sorted(c for c, a in tried.items() if a.size_bytes <= max_bytes)
        fails = sorted(c for c, a in tried.items() if a.size_bytes > max_bytes)
        low = fails[-1] + 1 if fails else MP4_CRF  # the best quality still possible
        high = fits[0] - 1 if fits else MP4_MAX_CRF  # the worst quality worth trying
        if low > high:
            break
        crf = min(max(_predict_crf(tried, max_bytes * 0.95), low), high)
    fitting = [a for c, a in sorted(tried.items()) if a.size_bytes <= max_bytes]
    return fitting[0] if fitting else tried[max(tried)]


def _predict_crf(tried: dict[int, _Attempt], target: float) -> int:
    """The CRF at which log(size) reaches `target`, from the two tries nearest to it."""
    nearest = sorted(tried, key=lambda c: abs(math.log(tried[c].size_bytes / target)))[:2]
    c0 = nearest[0]
    slope = -math.log(2) / 6  # log(size) per CRF step, x264's rule of thumb
    if len(nearest) == 2 and tried[nearest[1]].size_bytes != tried[c0].size_bytes:
        c1 = nearest[1]
        measured = math.log(tried[c1].size_bytes / tried[c0].size_bytes) / (c1 - c0)
        if measured < 0:  # sizes must fall with the CRF; otherwise keep the rule of thumb
            slope = measured
    # Round towards the higher CRF: better to fit on this try than to need another.
    return math.ceil(c0 + math.log(target / tried[c0].size_bytes) / slope - 1e-9)


def _write_mp4(
    frames: np.ndarray,
    out: Path,
    fps: float,
    size: tuple[int, int],
    crf: int,
    exe: str,
    timeout_s: float,
) -> None:
    height, width = frames.shape[1:3]
    # Convert to BT.709 and say so in the file: browsers guess BT.601 or BT.709 from the height
    # when a file is untagged, and a wrong guess shifts every colour. The tags go on the frames
    # (setparams) as well as on the encoder: the frames' own, unset, would win over the flags.
    scale = (
        f"scale={size[0]}:{size[1]}:flags=lanczos+accurate_rnd"
        ":out_color_matrix=bt709:out_range=tv,format=yuv420p,"
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"
    )
    args = [
        *_raw_input(width, height, _rate(fps)),
        "-vf",
        scale,
        "-c:v",
        "libx264",
        "-preset",
        MP4_PRESET,
        "-crf",
        str(crf),
        "-pix_fmt",
        "yuv420p",
        "-colorspace",
        "bt709",
        "-color_primaries",
        "bt709",
        "-color_trc",
        "bt709",
        "-color_range",
        "tv",
        # The index (moov) goes first, so Discord and browsers start playing before the end.
        "-movflags",
        "+faststart",
        "-an",
        "-f",
        "mp4",
        "-y",
        str(out),
    ]
    _run_ffmpeg(exe, args, frames, timeout_s)


def _fit_gif(
    frames: np.ndarray, out: Path, delay_cs: int, max_bytes: int, exe: str, timeout_s: float
) -> _Attempt:
    height, width = frames.shape[1:3]
    smallest = _min_scale(width, height)
    # The palette depends on the colours, not the size, so each one is made once.
    palettes: dict[int, Image.Image] = {}

    def write(scale: float, colours: int) -> _Attempt:
        if colours not in palettes:
            palettes[colours] = _palette(frames, colours, exe, timeout_s)
        size = _scaled_size(width, height, scale, even=False)
        _write_gif(frames, out, size, palettes[colours], delay_cs)
        reduced = colours != GIF_COLOURS[0] or scale < 1.0
        attempt = _Attempt(out.stat().st_size, *size, reduced=reduced)
        log.info("gif %dx%d, %d colours: %d bytes", *size, colours, attempt.size_bytes)
        return attempt

    scale = 1.0
    attempt = write(scale, GIF_COLOURS[0])
    # Smaller sizes first: a GIF's bytes follow its pixel count closely, so the next size is
    # predicted from the overshoot (with a margin) rather than walked down step by step.
    while attempt.size_bytes > max_bytes and scale > smallest:
        predicted = scale * math.sqrt(max_bytes / attempt.size_bytes) * 0.95
        scale = max(smallest, min(scale * GIF_SCALE_STEP, predicted))
        attempt = write(scale, GIF_COLOURS[0])
    for colours in GIF_COLOURS[1:]:
        if attempt.size_bytes <= max_bytes:
            break
        attempt = write(scale, colours)
    if attempt.size_bytes > max_bytes:
        raise _too_large(max_bytes, attempt.size_bytes, "gif")
    return attempt


def _palette(frames: np.ndarray, colours: int, exe: str, timeout_s: float) -> Image.Image:
    """One palette for the whole clip from ffmpeg's palettegen, which picks better colours than
    Pillow's quantizers (greens and skies come out truer); it sees a subsample of every frame."""
    count, height, width, _ = frames.shape
    step = max(1, math.ceil(math.sqrt(count * height * width / PALETTE_SAMPLE_PIXELS)))
    subsample = frames[:, ::step, ::step]
    # Stack the subsampled frames into one tall picture: palettegen then counts them all at once.
    sample = np.ascontiguousarray(subsample).reshape(-1, subsample.shape[2], 3)
    sample_h, sample_w = sample.shape[:2]
    args = [
        *_raw_input(sample_w, sample_h, Fraction(1)),
        "-vf",
        f"palettegen=max_colors={colours}:reserve_transparent=0:stats_mode=full",
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    rgb = _run_ffmpeg(exe, args, sample, timeout_s)
    if len(rgb) < colours * 3:
        raise EncodeFailed(f"palettegen returned {len(rgb)} bytes")
    palette = Image.new("P", (1, 1))
    # palettegen pads to 256 entries with copies; keep the asked-for count so the GIF's colour
    # table (and its bits per pixel) really shrinks.
    palette.putpalette(rgb[: colours * 3])
    return palette


def _write_gif(
    frames: np.ndarray, out: Path, size: tuple[int, int], palette: Image.Image, delay_cs: int
) -> None:
    images = [_gif_frame(frame, size, palette) for frame in frames]
    # loop=0 writes the NETSCAPE2.0 extension with a count of 0: loop forever. Pillow stores only
    # the changed rectangle of each frame and merges identical neighbours into one longer frame.
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=delay_cs * 10,
        loop=0,
        disposal=1,
    )


def _gif_frame(frame: np.ndarray, size: tuple[int, int], palette: Image.Image) -> Image.Image:
    image = Image.fromarray(frame)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    # Floyd-Steinberg keeps gradients (skies) free of bands; Pillow maps a frame in ~30 ms where
    # ffmpeg's paletteuse takes ten times longer for a near-identical result.
    return image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)


def _scales(width: int, height: int, step: float) -> Sequence[float]:
    """1, step, step², ... down to the smallest scale allowed, which is always included."""
    smallest = _min_scale(width, height)
    scales = [1.0]
    while scales[-1] * step > smallest:
        scales.append(scales[-1] * step)
    if scales[-1] > smallest:
        scales.append(smallest)
    return scales


def _min_scale(width: int, height: int) -> float:
    return min(1.0, MIN_SHORT_SIDE / min(width, height))


def _scaled_size(width: int, height: int, scale: float, *, even: bool) -> tuple[int, int]:
    """`width` x `height` times `scale`; even sides when the codec needs them (yuv420p)."""
    if even:
        return (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _too_large(max_bytes: int, smallest: int, format: OutputFormat) -> GenerationFailed:
    log.warning(
        "could not fit %s in %d bytes; the smallest try was %d", format, max_bytes, smallest
    )
    message = TOO_LARGE_MESSAGE.format(limit=_human_bytes(max_bytes))
    if format == "gif":
        message += TOO_LARGE_GIF_ADVICE
    return GenerationFailed(message, reason="too_large")


def _human_bytes(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    return f"{max(1, round(size / 1024))} KB"


def _rate(fps: float) -> Fraction:
    # ffmpeg wants a rational; 1001 covers the NTSC rates (29.97 = 30000/1001).
    return Fraction(fps).limit_denominator(1001)


def _raw_input(width: int, height: int, rate: Fraction) -> list[str]:
    return [
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(rate),
        "-i",
        "-",
    ]


def _run_ffmpeg(exe: str, args: list[str], frames: np.ndarray, timeout_s: float) -> bytes:
    """Run ffmpeg with `frames` as raw RGB on its stdin; return its stdout."""
    command = [exe, "-hide_banner", "-loglevel", "error", "-nostats", *args]
    try:
        done = subprocess.run(
            command,
            input=np.ascontiguousarray(frames).tobytes(),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EncodeFailed(f"timed out after {timeout_s:.0f} s", reason="timeout") from None
    except OSError as error:  # missing or unusable executable
        raise EncodeFailed(f"could not start {exe}: {error}") from error
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-2000:]
        log.error("ffmpeg exited with %d: %s", done.returncode, tail)
        failed = EncodeFailed(f"exit {done.returncode}: {tail}")
        if is_disk_full(failed):  # it could not write its output
            raise DiskFull(f"ffmpeg: {tail}")
        raise failed
    return done.stdout


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError("frames must be a uint8 numpy array")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must have shape (n, height, width, 3), not {frames.shape}")

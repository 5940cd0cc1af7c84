"""Our encoder against the seed recipe's (diffusers' `export_to_video` / `export_to_gif`).

One clip for all: 25 frames of 1024x576, a photo-like texture (1/f noise, smoother colour) under a
camera that pans 4 px a frame with a slight vertical sway, at 7 fps, as SVD-XT gives. Each encoder
runs `--repeats` times; the table shows the median time, the file size, the quality (PSNR against
the source frames, decoded by ffmpeg; for GIFs also after a slight blur, which is what the eye
sees of dithering; a GIF scaled down to fit is scaled back up to compare) and what Discord needs:
under 10 MiB, and for MP4 the index first (faststart) so it plays inline before it has downloaded.

The diffusers functions get PIL images, as the pipeline returns them by default (that conversion
is not timed). diffusers 0.42's `export_to_video` writes through imageio + imageio-ffmpeg (already
dependencies here); `export_to_gif` is Pillow's GIF writer.

    python -m bench.encode [--repeats 3] [--out bench/out/encode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from diffusers.utils import export_to_gif, export_to_video
from PIL import Image, ImageFilter, ImageSequence

from generation.encode import DEFAULT_MAX_BYTES, encode_clip
from generation.fake_engine import moving_clip

FPS = 7


@dataclass(frozen=True)
class Row:
    name: str
    format: str
    seconds: float
    # CPU time of this process and the ffmpeg it ran: what the work costs, however busy the machine.
    cpu_seconds: float
    size_bytes: int
    width: int
    height: int
    psnr: float
    psnr_blurred: float
    fits_10_mib: bool
    faststart: bool | None


def decode(path: Path) -> np.ndarray:
    if path.suffix == ".gif":
        with Image.open(path) as image:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)])
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True)
    line = next(x for x in probe.stderr.decode().splitlines() if "Video:" in x)
    size = next(part for part in line.split(", ") if "x" in part and part.split("x")[0].isdigit())
    width, height = (int(v) for v in size.split(" ")[0].split("x"))
    raw = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    difference = a.astype(np.int32) - b
    return float(10 * np.log10(255**2 / np.mean(difference * difference, dtype=np.float64)))


def to_source_size(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if frames.shape[2:0:-1] == size:
        return frames
    resized = [Image.fromarray(f).resize(size, Image.Resampling.LANCZOS) for f in frames]
    return np.stack([np.asarray(f) for f in resized])


def blurred(frames: np.ndarray) -> np.ndarray:
    blur = ImageFilter.GaussianBlur(1.2)
    return np.stack([np.asarray(Image.fromarray(f).filter(blur)) for f in frames])


def moov_before_mdat(path: Path) -> bool:
    data, offset, atoms = path.read_bytes(), 0, []
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        atoms.append(kind)
        if size < 8:
            break
        offset += size
    return b"moov" in atoms and atoms.index(b"moov") < atoms.index(b"mdat")


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (ffmpeg)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(
    name: str, fmt: str, write: Callable[[Path], object], source: np.ndarray, repeats: int
) -> Row:
    times, cpu_times = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{fmt}"
        for _ in range(repeats):
            path.unlink(missing_ok=True)
            cpu_before = cpu_seconds()
            started = time.perf_counter()
            write(path)
            times.append(time.perf_counter() - started)
            cpu_times.append(cpu_seconds() - cpu_before)
        decoded = decode(path)
        height, width = decoded.shape[1:3]
        compared = to_source_size(decoded, (source.shape[2], source.shape[1]))
        size = path.stat().st_size
        return Row(
            name=name,
            format=fmt,
            seconds=statistics.median(times),
            cpu_seconds=statistics.median(cpu_times),
            size_bytes=size,
            width=width,
            height=height,
            psnr=psnr(compared, source),
            psnr_blurred=psnr(blurred(compared), blurred(source)),
            fits_10_mib=size <= DEFAULT_MAX_BYTES,
            faststart=moov_before_mdat(path) if fmt == "mp4" else None,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/out/encode.json"))
    args = parser.parse_args()

    source = moving_clip()
    pil_frames = [Image.fromarray(frame) for frame in source]
    rows = [
        measure(
            "ours",
            "mp4",
            lambda p: encode_clip(source, p, format="mp4", fps=FPS),
            source,
            args.repeats,
        ),
        measure(
            "diffusers export_to_video",
            "mp4",
            lambda p: export_to_video(pil_frames, str(p), fps=FPS),
            source,
            args.repeats,
        ),
        measure(
            "ours",
            "gif",
            lambda p: encode_clip(source, p, format="gif", fps=FPS),
            source,
            args.repeats,
        ),
        measure(
            "diffusers export_to_gif",
            "gif",
            lambda p: export_to_gif(pil_frames, str(p), fps=FPS),
            source,
            args.repeats,
        ),
    ]

    print(
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"ffmpeg {imageio_ffmpeg.get_ffmpeg_version()}, {args.repeats} repeats (median)"
    )
    header = (
        f"{'encoder':28} {'fmt':4} {'seconds':>8} {'CPU s':>6} {'MB':>7} {'size':>9} {'PSNR':>6} "
    )
    print(header + f"{'blurred':>8} {'≤10MiB':>7} {'faststart':>9}")
    for row in rows:
        faststart = "-" if row.faststart is None else ("yes" if row.faststart else "no")
        print(
            f"{row.name:28} {row.format:4} {row.seconds:8.2f} {row.cpu_seconds:6.2f} "
            f"{row.size_bytes / 1e6:7.2f} "
            f"{row.width}x{row.height:<5} {row.psnr:6.2f} {row.psnr_blurred:8.2f} "
            f"{'yes' if row.fits_10_mib else 'NO':>7} {faststart:>9}"
        )
    print("\nratios, ours / diffusers (time and bytes: lower is better; PSNR: difference in dB)")
    for fmt in ("mp4", "gif"):
        ours, theirs = (r for r in rows if r.format == fmt)
        print(
            f"  {fmt}: time x{ours.seconds / theirs.seconds:.2f}, "
            f"CPU x{ours.cpu_seconds / theirs.cpu_seconds:.2f}, "
            f"bytes x{ours.size_bytes / theirs.size_bytes:.2f}, "
            f"PSNR {ours.psnr - theirs.psnr:+.2f} dB, "
            f"blurred {ours.psnr_blurred - theirs.psnr_blurred:+.2f} dB"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()

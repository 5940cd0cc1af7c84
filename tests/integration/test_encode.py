"""The encoder against the real ffmpeg: files that play, with the right frames, within budget.

Files are read back with tools other than the encoder (imageio's ffmpeg reader, Pillow, the raw
bytes), so a test fails when a user's player would.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageSequence

from generation.encode import EncodeFailed, encode_clip, interpolate_frames, ping_pong_frames
from generation.errors import DiskFull, GenerationFailed
from generation.fake_engine import moving_clip
from generation.reencode import read_frames, reencode_file
from generation.results import EncodedClip

MIB = 1024 * 1024


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    difference = a.astype(np.int32) - b
    mse = np.mean(difference * difference, dtype=np.float64)
    return float(10 * np.log10(255**2 / mse))


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def read_mp4(path: Path) -> np.ndarray:
    """Every frame as a player shows it: decoded by ffmpeg to RGB, honouring the file's tags."""
    width, height = (int(v) for v in re.findall(r", (\d+)x(\d+)", probe(path))[0])
    decoded = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(decoded, np.uint8).reshape(-1, height, width, 3)


def probe(path: Path) -> str:
    """ffmpeg's description of the file's video stream (what ffprobe would print)."""
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    return next(line for line in info.stderr.decode().splitlines() if "Video:" in line)


@dataclass(frozen=True)
class Gif:
    frames: np.ndarray
    size: tuple[int, int]
    loop: int | None
    durations: list[int]


def read_gif(path: Path) -> Gif:
    with Image.open(path) as image:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info["duration"])
        return Gif(np.stack(frames), image.size, image.info.get("loop"), durations)


def top_level_atoms(data: bytes) -> list[bytes]:
    """The order of an MP4's top-level boxes (ftyp, moov, mdat...)."""
    atoms, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        atoms.append(kind)
        if size == 0:
            break
        offset += size
    return atoms


def shrink(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX)) for f in frames]
    )


def assert_in_order(decoded: np.ndarray, source: np.ndarray) -> None:
    """Each decoded frame is closest to its own source frame: none lost, doubled or swapped."""
    small_d = decoded[:, ::4, ::4].astype(np.int16)
    small_s = source[:, ::4, ::4].astype(np.int16)
    # distances[i, j]: how far decoded frame i is from source frame j.
    distances = np.abs(small_d[:, None] - small_s[None, :]).mean(axis=(2, 3, 4))
    assert distances.argmin(axis=1).tolist() == list(range(len(decoded)))


@pytest.fixture(scope="module")
def full_clip() -> np.ndarray:
    return moving_clip()


@pytest.fixture(scope="module")
def mp4(full_clip: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> EncodedClip:
    path = tmp_path_factory.mktemp("mp4") / "clip.mp4"
    return encode_clip(full_clip, path, format="mp4", fps=7)


@pytest.fixture(scope="module")
def gif(full_clip: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> EncodedClip:
    path = tmp_path_factory.mktemp("gif") / "clip.gif"
    return encode_clip(full_clip, path, format="gif", fps=7)


# --- the 25-frame 1024x576 clip -----------------------------------------------------------------


def test_textured_clip_fits_10_mib_as_mp4_with_every_frame(
    mp4: EncodedClip, full_clip: np.ndarray
) -> None:
    assert mp4.path.stat().st_size == mp4.size_bytes <= 10 * MIB
    assert (mp4.width, mp4.height, mp4.frame_count, mp4.fps) == (1024, 576, 25, 7.0)
    assert mp4.reduced is False
    decoded = read_mp4(mp4.path)
    assert decoded.shape == (25, 576, 1024, 3)
    # Colours and detail survive: a wrong colour matrix or range alone costs more than 10 dB.
    assert psnr(decoded, full_clip) > 36
    assert_in_order(decoded, full_clip)


def test_mp4_is_h264_yuv420p_with_the_index_first(mp4: EncodedClip) -> None:
    stream = probe(mp4.path)  # e.g. "Video: h264 (High) (avc1 / ...), yuv420p(tv, bt709, ..."
    assert "Video: h264" in stream
    # One "bt709" when matrix, primaries and transfer all say so ("bt709/unknown/unknown" else).
    assert re.search(r"yuv420p\(tv, bt709[,)]", stream), stream
    assert "1024x576" in stream
    assert "7 fps" in stream
    atoms = top_level_atoms(mp4.path.read_bytes())
    # faststart: the moov index before the media data, so playback starts while downloading.
    assert atoms.index(b"moov") < atoms.index(b"mdat")


def test_textured_clip_fits_10_mib_as_a_looping_gif(
    gif: EncodedClip, full_clip: np.ndarray
) -> None:
    assert gif.path.stat().st_size == gif.size_bytes <= 10 * MIB
    back = read_gif(gif.path)
    decoded = back.frames
    assert len(decoded) == gif.frame_count == 25
    assert (gif.width, gif.height) == back.size == decoded.shape[2:0:-1]
    # Scaled down if it had to be, but never stretched.
    assert gif.width / gif.height == pytest.approx(16 / 9, rel=0.01)
    assert gif.reduced == (gif.width < 1024)
    # Loops forever: the NETSCAPE2.0 extension with a loop count of 0.
    assert back.loop == 0
    assert b"NETSCAPE2.0\x03\x01\x00\x00" in gif.path.read_bytes()
    assert back.durations == [140] * 25  # 7 fps in GIF's 1/100 s steps
    assert gif.fps == pytest.approx(100 / 14)
    # The picture survives the palette: compare at a size where dithering averages out.
    assert mean_abs(shrink(decoded, (128, 72)), shrink(full_clip, (128, 72))) < 4
    assert_in_order(shrink(decoded, (512, 288)), shrink(full_clip, (512, 288)))


# --- tight budgets -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_clip() -> np.ndarray:
    return moving_clip(width=512, height=288, speed=2.0, seed=1)


def test_tight_budget_lowers_mp4_quality_and_still_fits(
    half_clip: np.ndarray, tmp_path: Path
) -> None:
    roomy = encode_clip(half_clip, tmp_path / "roomy.mp4", format="mp4", fps=7)
    budget = roomy.size_bytes // 3
    tight = encode_clip(half_clip, tmp_path / "tight.mp4", format="mp4", fps=7, max_bytes=budget)
    assert tight.reduced is True
    assert tight.size_bytes == tight.path.stat().st_size <= budget
    decoded = read_mp4(tight.path)
    assert len(decoded) == 25
    # Still a watchable version of the same clip, not a grey smear.
    assert psnr(decoded, half_clip) > 25
    assert_in_order(decoded, half_clip)


def test_the_mp4_posted_is_the_try_that_fitted_whatever_the_order_of_tries(
    half_clip: np.ndarray, tmp_path: Path
) -> None:
    # The CRF search may settle on a try made before its last one (the last came out too big):
    # the file kept must be that one, or Discord is sent a file over its limit.
    roomy = encode_clip(half_clip, tmp_path / "roomy.mp4", format="mp4", fps=7)
    for share in (2, 3, 5, 7):
        budget = roomy.size_bytes // share
        out = tmp_path / f"budget-{share}.mp4"
        clip = encode_clip(half_clip, out, format="mp4", fps=7, max_bytes=budget)
        assert clip.size_bytes == out.stat().st_size <= budget, (share, budget)
        assert len(read_mp4(out)) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["roomy.mp4"] + [f"budget-{share}.mp4" for share in (2, 3, 5, 7)]
    )  # no try left behind


def test_a_gif_shrunk_after_a_refusal_keeps_its_timing_and_frames(tmp_path: Path) -> None:
    # Still for its first 10 frames, as SVD clips of a calm picture often are: the GIF holds
    # them as one long frame, which the re-encode must not squeeze to one frame's time.
    frames = moving_clip(width=256, height=144, speed=2.0, seed=3)
    frames[:10] = frames[0]
    posted = encode_clip(frames, tmp_path / "clip.gif", format="gif", fps=7)
    assert read_gif(posted.path).durations[0] > 1000  # merged: 10 frames shown as one
    smaller = reencode_file(posted.path, posted.size_bytes * 3 // 4)
    before, after = read_gif(posted.path), read_gif(smaller)
    assert sum(after.durations) == pytest.approx(sum(before.durations), rel=0.05)
    assert after.durations[0] == pytest.approx(before.durations[0], rel=0.05)
    assert len(read_frames(smaller)[0]) == len(frames) == 25


def test_tight_budget_shrinks_the_gif_and_still_fits(half_clip: np.ndarray, tmp_path: Path) -> None:
    budget = 1 * MIB
    tight = encode_clip(half_clip, tmp_path / "tight.gif", format="gif", fps=7, max_bytes=budget)
    assert tight.reduced is True
    assert tight.size_bytes == tight.path.stat().st_size <= budget
    back = read_gif(tight.path)
    assert len(back.frames) == 25
    assert back.loop == 0
    assert back.size == (tight.width, tight.height)
    assert back.size[0] < 512
    assert back.size[0] / back.size[1] == pytest.approx(16 / 9, rel=0.02)


def test_gif_at_its_smallest_size_drops_colours(tmp_path: Path) -> None:
    # 64 px high is already the smallest a clip may get, so only the colours are left to give.
    small = moving_clip(frames=10, width=114, height=64, speed=1.0, seed=2)
    full = encode_clip(small, tmp_path / "full.gif", format="gif", fps=7)
    assert full.reduced is False
    budget = full.size_bytes - 1
    fewer = encode_clip(small, tmp_path / "fewer.gif", format="gif", fps=7, max_bytes=budget)
    assert fewer.reduced is True
    assert fewer.size_bytes <= budget
    assert (fewer.width, fewer.height) == (114, 64)
    # The colour table size is in the logical screen descriptor: 2 ** (1 + low three bits).
    flags = fewer.path.read_bytes()[10]
    assert 2 ** (1 + (flags & 0b111)) <= 128


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_impossible_budget_fails_cleanly(fmt: str, tmp_path: Path) -> None:
    clip = moving_clip(frames=6, width=256, height=144, seed=3)
    target = tmp_path / f"clip.{fmt}"
    with pytest.raises(GenerationFailed) as caught:
        encode_clip(clip, target, format=fmt, fps=7, max_bytes=600)  # type: ignore[arg-type]
    assert caught.value.reason == "too_large"
    assert "upload limit" in caught.value.user_message
    assert ("MP4" in caught.value.user_message) == (fmt == "gif")
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind


# --- loops, interpolation, odd sizes -------------------------------------------------------------


def test_ping_pong_plays_back_without_repeating_the_ends(tmp_path: Path) -> None:
    clip = moving_clip(frames=8, width=256, height=144, speed=6.0, seed=4)
    assert [int(i) for i in ping_pong_frames(np.arange(4)[:, None, None, None])[:, 0, 0, 0]] == [
        0, 1, 2, 3, 2, 1,
    ]  # fmt: skip
    done = encode_clip(clip, tmp_path / "loop.mp4", format="mp4", fps=7, ping_pong=True)
    assert done.frame_count == 14
    decoded = read_mp4(tmp_path / "loop.mp4")
    assert len(decoded) == 14
    assert_in_order(decoded[:8], clip)
    assert_in_order(decoded[7:][::-1], clip[1:])


def test_interpolation_makes_the_in_between_frames(tmp_path: Path) -> None:
    # The truth: a pan filmed at twice the frame rate. The encoder sees every other frame.
    truth = moving_clip(frames=17, width=256, height=144, speed=3.0, seed=5)
    given = truth[::2]
    doubled = interpolate_frames(given, 7, ffmpeg=ffmpeg_exe())
    assert doubled.shape == truth.shape
    for i in range(1, 16, 2):
        between = doubled[i]
        blend = ((given[i // 2].astype(np.uint16) + given[i // 2 + 1]) // 2).astype(np.uint8)
        # Closer to the real middle frame than either neighbour, or than cross-fading them.
        assert mean_abs(between, truth[i]) < mean_abs(blend, truth[i])
        assert mean_abs(between, truth[i]) < mean_abs(given[i // 2], truth[i])
    # The originals keep their places.
    assert mean_abs(doubled[::2], given) < 1.5

    done = encode_clip(given, tmp_path / "smooth.gif", format="gif", fps=7, interpolate=True)
    assert (done.frame_count, done.fps) == (17, pytest.approx(100 / 7))
    assert len(read_gif(done.path).frames) == 17


def test_odd_sizes_become_even_for_mp4(tmp_path: Path) -> None:
    clip = moving_clip(frames=5, width=255, height=143, seed=6)
    done = encode_clip(clip, tmp_path / "odd.mp4", format="mp4", fps=8)
    assert done.width % 2 == 0 and done.height % 2 == 0
    decoded = read_mp4(done.path)
    assert decoded.shape == (5, done.height, done.width, 3)


def test_fast_gifs_are_capped_at_50_fps(tmp_path: Path) -> None:
    clip = moving_clip(frames=4, width=128, height=72, seed=7)
    done = encode_clip(clip, tmp_path / "fast.gif", format="gif", fps=60)
    # Browsers play delays under 2/100 s as 1/10 s, so faster would play slower.
    assert done.fps == 50
    assert read_gif(done.path).durations == [20] * 4


# --- failures ------------------------------------------------------------------------------------


def fake_ffmpeg(tmp_path: Path, body: str) -> str:
    script = tmp_path / "ffmpeg"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_ffmpeg_errors_reach_the_logs_not_the_user(tmp_path: Path) -> None:
    broken = fake_ffmpeg(
        tmp_path, "cat >/dev/null; echo 'Unknown encoder libx264: boom' >&2; exit 3"
    )
    target = tmp_path / "clip.mp4"
    with pytest.raises(EncodeFailed) as caught:
        encode_clip(moving_clip(2, 64, 64), target, format="mp4", fps=7, ffmpeg=broken)
    assert caught.value.reason == "encode"
    assert "boom" in caught.value.detail
    assert "boom" in str(caught.value)
    assert "boom" not in caught.value.user_message
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_a_full_disk_while_saving_says_the_disk_is_full_not_the_gpu(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # Pillow writes the GIF itself; both formats end with a rename into place.
    monkeypatch.setattr(Image.Image, "save", full)
    monkeypatch.setattr(os, "replace", full)
    target = tmp_path / f"clip.{fmt}"
    with pytest.raises(DiskFull) as caught:
        encode_clip(moving_clip(2, 64, 64), target, format=fmt, fps=7)  # type: ignore[arg-type]
    assert caught.value.reason == "disk" and "No space left" in caught.value.detail
    assert "out of disk space" in caught.value.user_message
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written left


def test_a_hung_ffmpeg_times_out(tmp_path: Path) -> None:
    hung = fake_ffmpeg(tmp_path, "exec sleep 30")
    with pytest.raises(EncodeFailed) as caught:
        encode_clip(
            moving_clip(2, 64, 64),
            tmp_path / "c.gif",
            format="gif",
            fps=7,
            ffmpeg=hung,
            timeout_s=0.5,
        )
    assert caught.value.reason == "timeout"


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((3, 64, 64, 3), np.float32),
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((3, 64, 64, 4), np.uint8),
        np.zeros((0, 64, 64, 3), np.uint8),
    ],
)
def test_frames_must_be_uint8_rgb(frames: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frames"):
        encode_clip(frames, tmp_path / "x.mp4", format="mp4", fps=7)


def test_ffmpeg_that_cannot_write_for_a_full_disk_says_the_disk_is_full(tmp_path: Path) -> None:
    # It writes part of its output (the last argument), then finds no room for the rest.
    full = fake_ffmpeg(
        tmp_path,
        'cat >/dev/null; for last; do :; done; echo half > "$last"; '
        "echo 'av_interleaved_write_frame(): No space left on device' >&2; exit 1",
    )
    clips = tmp_path / "clips"
    clips.mkdir()
    target = clips / "clip.mp4"
    with pytest.raises(DiskFull) as caught:
        encode_clip(moving_clip(2, 64, 64), target, format="mp4", fps=7, ffmpeg=full)
    assert caught.value.reason == "disk" and "No space left" in caught.value.detail
    assert "out of disk space" in caught.value.user_message
    assert list(clips.iterdir()) == []  # nothing half-written left on the full disk

"""`svd-animate` end to end on the tiny model, and its answers to bad input."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from generation.cli import EXIT_FAILED, EXIT_USAGE, ProgressLine, main
from generation.results import Progress

FRAMES = 4  # the tiny model's own


@pytest.fixture
def photo(tmp_path: Path, picture: Callable[..., Image.Image]) -> Path:
    # A 4:3 photo: the CLI crops it to 16:9 and resizes it to 256x144 (RESOLUTION 256).
    path = tmp_path / "photo.jpg"
    picture(400, 300).save(path, quality=90)
    return path


def decode_mp4(path: Path, width: int, height: int) -> tuple[np.ndarray, str]:
    """Frames as a player decodes them, and ffmpeg's description of the stream."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    raw = subprocess.run(
        [exe, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3), info.stderr


def tiny_args(model: Path) -> list[str]:
    return ["--model", str(model), "--device", "cpu", "--resolution", "256", "--steps", "2"]


def test_writes_a_playable_mp4_and_says_what_it_did(
    photo: Path, tiny_svd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "clip.mp4"
    code = main(
        [str(photo), "-o", str(out), "--seed", "3", "--motion", "180", *tiny_args(tiny_svd_dir)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    frames, stream = decode_mp4(out, 256, 144)
    assert len(frames) == FRAMES
    assert "h264" in stream and "yuv420p" in stream
    assert "seed 3" in captured.out and "plan cpu" in captured.out
    assert f"wrote {out}" in captured.out and "MiB" in captured.out
    # Progress: the steps, then the decode, then the encode, on stderr.
    phases = [line.split()[0] for line in captured.err.splitlines() if line.strip()]
    assert phases.index("denoising") < phases.index("decoding") < phases.index("encoding")
    assert "2/2" in captured.err


def test_draft_quality_makes_the_same_clip_shape_and_says_so(
    photo: Path, tiny_svd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "draft.mp4"
    args = [str(photo), "-o", str(out), "--seed", "3", "--quality", "draft", "-q"]
    code = main([*args, *tiny_args(tiny_svd_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    frames, _stream = decode_mp4(out, 256, 144)
    assert len(frames) == FRAMES
    assert "draft quality" in captured.out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fast_plan_compiles_for_its_one_clip_only_once(
    photo: Path,
    tiny_svd_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # --memory-mode fast compiles at load; for frames and a decode chunk of the member's own
    # (and only this clip's orientation), not the defaults and then this clip's shape again.
    from generation.engine import SVDEngine
    from generation.placement import compile_counters

    made = SVDEngine.__init__
    run = SVDEngine.run
    before_the_clip: dict[str, int] = {}

    def eager(self: SVDEngine, *args: Any, **kwargs: Any) -> None:
        # dynamo's graphs and guards without minutes of C++ compilation (see test_engine)
        kwargs["plan_settings"] = replace(kwargs["plan_settings"], compile_backend="eager")
        made(self, *args, **kwargs)

    def counted(self: SVDEngine, *args: Any, **kwargs: Any) -> Any:
        before_the_clip.update(compile_counters())
        return run(self, *args, **kwargs)

    monkeypatch.setattr(SVDEngine, "__init__", eager)
    monkeypatch.setattr(SVDEngine, "run", counted)
    out = tmp_path / "fast.mp4"
    args = [str(photo), "-o", str(out), "-q", "--memory-mode", "fast"]
    code = main([*args, "--frames", "3", "--decode-chunk", "1", *tiny_args(tiny_svd_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "plan fast" in captured.out
    assert compile_counters() == before_the_clip  # nothing compiled again for the clip
    frames, _stream = decode_mp4(out, 256, 144)
    assert len(frames) == 3


def test_a_gif_name_makes_a_gif(
    photo: Path, tiny_svd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "clip.gif"
    code = main([str(photo), "-o", str(out), "--preset", "subtle", "-q", *tiny_args(tiny_svd_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""  # --quiet
    with Image.open(out) as gif:
        assert (gif.format, gif.n_frames, gif.size) == ("GIF", FRAMES, (256, 144))


@pytest.mark.parametrize(
    ("make", "args", "says"),
    [
        (lambda p: p.write_text("hello"), [], "PNG, JPEG, WebP or GIF"),
        (lambda p: None, [], "cannot read"),
        (lambda p: Image.new("RGB", (64, 64)).save(p, "PNG"), ["--motion", "300"], "0 to 255"),
        (lambda p: Image.new("RGB", (64, 64)).save(p, "PNG"), ["--steps", "0"], "1 to 50"),
        (lambda p: Image.new("RGB", (64, 64)).save(p, "PNG"), ["--resolution", "300"], "64"),
    ],
    ids=["text-named-png", "missing-file", "motion-out-of-range", "no-steps", "bad-resolution"],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], object],
    args: list[str],
    says: str,
) -> None:
    image = tmp_path / "input.png"
    make(image)
    code = main([str(image), "-o", str(tmp_path / "out.mp4"), "--device", "cpu", *args])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svd-animate: ") and says in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "out.mp4").exists()


def test_a_model_that_cannot_load_is_one_line_and_exit_code_1(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", str(tmp_path / "no-model"), "--device", "cpu", "--offline", "-q"]
    code = main([str(photo), "-o", str(tmp_path / "out.mp4"), *args])
    captured = capsys.readouterr()
    assert code == EXIT_FAILED
    assert captured.err.count("\n") == 1 and "could not be loaded" in captured.err
    assert "Traceback" not in captured.err


def test_the_console_script_module_answers_help_without_loading_torch() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, generation.cli as c; c.build_parser(); print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip() == "False"


def test_progress_line_writes_a_line_per_phase_to_a_pipe(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w+") as stream:
        line = ProgressLine(stream)
        for step in range(1, 9):
            line(Progress("denoising", step, 8))
        line(Progress("decoding", 0, 1))
        line(Progress("decoding", 1, 1))
        line.done()
        stream.seek(0)
        text = stream.read().splitlines()
    # The first step, each quarter, then the decode's start and end: never a line per step.
    assert [t.split()[0] for t in text].count("denoising") == 5
    assert "8/8" in text[4] and text[-1].startswith("decoding") and "1/1" in text[-1]


def test_the_tiny_model_saves_from_the_command_line(tmp_path: Path) -> None:
    from diffusers import StableVideoDiffusionPipeline

    from generation.tiny import main as save_tiny

    assert save_tiny([str(tmp_path / "tiny"), "--frames", "3"]) == 0
    pipe: Any = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "tiny")
    assert pipe.unet.config.num_frames == 3
    assert pipe.vae_scale_factor == 8  # four VAE levels: latents are 1/8 of the picture

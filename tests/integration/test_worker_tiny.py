"""The worker on the real engine with the tiny random SVD model: two jobs back to back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.jobs import EventKind, JobEvent, JobRequest
from generation.options import AnimateOptions, OutputFormat
from generation.queue import FairQueue
from generation.reencode import read_frames
from generation.worker import LocalJobQueue

engine_module = pytest.importorskip("generation.engine", reason="generation/engine.py not ready")
encode_module = pytest.importorskip("generation.encode", reason="generation/encode.py not ready")
tiny = pytest.importorskip("generation.tiny")

FRAMES = 4
WIDTH, HEIGHT = 256, 144


def read_clip(path: Path) -> np.ndarray:
    """The frames a player would show: decoded by ffmpeg (MP4) or Pillow (GIF).

    Not imageio's readers: they leave pipes open, which pytest's -W error turns into failures."""
    return read_frames(path)[0]


@pytest.fixture
def tiny_model(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.mark.slow
async def test_two_jobs_back_to_back_make_two_playable_clips(
    tiny_model: Path, tmp_path: Path
) -> None:
    # The service stores the fitted image; here it already has the clip's size.
    image_path = tmp_path / "input.png"
    Image.radial_gradient("L").resize((WIDTH, HEIGHT)).convert("RGB").save(image_path)
    engine = engine_module.SVDEngine(models=[str(tiny_model)], device="cpu")
    runtime = LocalJobQueue(
        engine,
        output_dir=tmp_path / "outputs",
        queue=FairQueue(max_per_user=2),
        encoder=encode_module.encode_clip,
        job_timeout=120,
    )
    events: list[JobEvent] = []
    stream = runtime.events()
    try:
        await runtime.start()
        jobs: list[tuple[str, OutputFormat]] = [("first", "mp4"), ("second", "gif")]
        for job_id, fmt in jobs:
            options = AnimateOptions(num_inference_steps=2, num_frames=FRAMES, seed=7, format=fmt)
            await runtime.submit(JobRequest(job_id, 1, options, image_path, max_bytes=8 << 20))
        async for event in stream:
            events.append(event)
            if sum(e.terminal for e in events) == 2:
                break
    finally:
        await runtime.stop(5)

    assert runtime.ready.is_set()
    done = [e for e in events if e.terminal]
    assert [(e.job_id, e.kind) for e in done] == [
        ("first", EventKind.DONE),
        ("second", EventKind.DONE),
    ]
    for event, ext in zip(done, ["mp4", "gif"], strict=True):
        assert event.clip is not None
        assert event.clip.path == tmp_path / "outputs" / f"{event.job_id}.{ext}"
        frames = read_clip(event.clip.path)
        assert frames.shape[0] == FRAMES
        assert frames.shape[1:3] == (HEIGHT, WIDTH)
        assert event.seed == 7
        steps = [e.step for e in events if e.job_id == event.job_id and e.kind is EventKind.STEP]
        assert steps and steps[-1] == 2

"""Integration fixtures: tiny random SVD models saved once per session, and test pictures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Frames each tiny model makes; clips are 256x144 (RESOLUTION=256) landscape, 144x256 portrait.
TINY_FRAMES = 4
TINY_FRAMES_B = 3


@pytest.fixture(scope="session")
def tiny_svd_dir(tiny_model_dir: Path) -> Path:
    """A tiny random SVD pipeline (4 frames): the one every test folder shares."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def tiny_svd_dir_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with other weights and 3 frames, standing in for "the faster SVD"."""
    from generation.tiny import save_tiny_pipeline

    return save_tiny_pipeline(
        tmp_path_factory.mktemp("tiny-svd") / "b", num_frames=TINY_FRAMES_B, seed=1
    )


def _picture(width: int = 256, height: int = 144, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    detail = rng.normal(0, 20, size=(height, width, 3))
    return Image.fromarray(np.clip(base + detail, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def picture() -> Callable[..., Image.Image]:
    """`picture(width=256, height=144, seed=0)`: a textured RGB picture, gradients plus detail."""
    return _picture

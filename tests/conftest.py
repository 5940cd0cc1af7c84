"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fakes.redis_server import redis_server  # noqa: F401  (a shared fixture)

# One intra-op thread: on a 2-core machine a second one spins against the event loop, ffmpeg and
# the fake Discord server, and the tiny model runs ten times slower, not faster.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SVD pipeline saved with `save_pretrained`, loaded the way real weights are."""
    from generation.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-svd") / "model")

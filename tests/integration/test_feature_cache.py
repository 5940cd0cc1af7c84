"""Draft quality: the deep-feature cache on the tiny SVD UNet, and through the engine.

What a member would check: a draft clip has the frames and size asked for, runs the deep blocks
on only one step in three, is reproducible from its seed, and stays close to the full-quality
clip; full quality is untouched by the cache being installed. That the fast plan compiles draft
quality at warm-up and never again is checked with the rest of its compile test in
test_engine.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

from generation.engine import SVDEngine
from generation.feature_cache import FeatureCache
from generation.options import QUALITY_CACHE_INTERVALS, AnimateOptions

FRAMES = 4
Picture = Callable[..., Image.Image]


class Calls:
    """Counts how often a module really computes (a hook on a leaf inside it)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        module.register_forward_hook(self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def unet_inputs(seed: int = 0, timestep: float = 1.5) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, FRAMES, 8, 8, 16, generator=generator)
    embeddings = torch.randn(2, 1, 32, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    return sample, timestep, embeddings, time_ids


@pytest.fixture
def pipe(tiny_svd_dir: Path) -> Any:
    return StableVideoDiffusionPipeline.from_pretrained(tiny_svd_dir)


@pytest.mark.parametrize("always_keep", [False, True])
@torch.no_grad()
def test_best_quality_computes_exactly_what_the_bare_unet_does(
    pipe: Any, always_keep: bool
) -> None:
    inputs = unet_inputs()
    before = pipe.unet(*inputs).sample
    cache = FeatureCache(pipe.unet, always_keep=always_keep)
    cache.start(1, steps=3)
    modes = []
    for step in range(3):
        modes.append(cache.mode)
        assert torch.equal(pipe.unet(*inputs).sample, before)
        cache.step_done(step)
    # Compiled plans keep the feature on every whole step, so best quality and a draft's whole
    # steps share one graph; the others need not hold it.
    assert modes == (["fill"] * 3 if always_keep else ["off"] * 3)


@pytest.mark.parametrize("keep_on", [None, "cpu"])
@torch.no_grad()
def test_a_reused_step_skips_the_deep_blocks_and_matches_on_the_same_input(
    pipe: Any, keep_on: str | None
) -> None:
    deep = Calls(pipe.unet.mid_block.resnets[0])
    lower_down = Calls(pipe.unet.down_blocks[1].resnets[0])
    outer = Calls(pipe.unet.up_blocks[-1].resnets[0])
    cache = FeatureCache(pipe.unet, keep_on=keep_on)
    cache.start(2, steps=2)
    inputs = unet_inputs()
    full = pipe.unet(*inputs).sample
    cache.step_done(0)
    assert cache.mode == "reuse"
    reused = pipe.unet(*inputs).sample
    # The deep blocks ran once (the full step), the outer level twice.
    assert (deep.count, lower_down.count, outer.count) == (1, 1, 2)
    # Same input: the kept deep feature is exactly what they would have computed.
    assert torch.equal(reused, full)


@torch.no_grad()
def test_a_reused_step_on_a_new_input_is_close_but_not_the_same(pipe: Any) -> None:
    cache = FeatureCache(pipe.unet)
    cache.start(2, steps=2)
    pipe.unet(*unet_inputs(seed=0, timestep=2.0))
    cache.step_done(0)
    later = unet_inputs(seed=0, timestep=1.5)
    reused = pipe.unet(*later).sample
    cache.stop()
    exact = pipe.unet(*later).sample
    error = ((reused - exact).norm() / exact.norm()).item()
    assert 0 < error < 0.5


@pytest.fixture(scope="module")
def four_level_unet() -> tuple[Any, FeatureCache]:
    """SVD's four levels (the tiny model has two, so no up block is merely skipped there), with
    the cache installed once."""
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        layers_per_block=1,
        num_attention_heads=(2, 2, 2, 2),
        cross_attention_dim=16,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        in_channels=8,
        out_channels=4,
        num_frames=3,
    ).eval()
    return unet, FeatureCache(unet)


# 768x432 gives 96x54 latents: not a multiple of the UNet's 8, so it forwards upsample sizes.
@pytest.mark.parametrize(("height", "width"), [(54, 96), (9, 13), (8, 16)])
@torch.no_grad()
def test_on_svds_four_levels_and_odd_latent_sizes_a_reused_step_is_exact(
    four_level_unet: tuple[Any, FeatureCache], height: int, width: int
) -> None:
    unet, cache = four_level_unet
    generator = torch.Generator().manual_seed(height)
    sample = torch.randn(2, 3, 8, height, width, generator=generator)
    embeddings = torch.randn(2, 1, 16, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    cache.start(1, steps=1)
    bare = unet(sample, 1.5, embeddings, time_ids).sample
    deep = Calls(unet.up_blocks[1].resnets[0])  # an up block that is skipped, not the cached one
    cache.start(2, steps=2)
    whole = unet(sample, 1.5, embeddings, time_ids).sample
    cache.step_done(0)
    reused = unet(sample, 1.5, embeddings, time_ids).sample
    cache.stop()
    assert deep.count == 1
    assert torch.equal(whole, bare)
    torch.testing.assert_close(reused, bare, rtol=0, atol=1e-5)


def test_the_schedule_runs_one_step_in_three_whole() -> None:
    class Blocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            level = torch.nn.Module()
            level.resnets = torch.nn.ModuleList([torch.nn.Identity()])
            level.downsamplers = None
            self.down_blocks = torch.nn.ModuleList([torch.nn.Identity(), level])
            self.mid_block = torch.nn.Identity()
            self.up_blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])

    cache = FeatureCache(Blocks())
    modes = []
    cache.start(3, steps=7)
    for step in range(7):
        modes.append(cache.mode)
        cache.step_done(step)
    assert modes == ["fill", "reuse", "reuse", "fill", "reuse", "reuse", "fill"]
    assert (cache.full_steps, cache.cached_steps) == (3, 4)
    with pytest.raises(ValueError):
        cache.start(0, steps=7)


def test_draft_quality_is_one_full_step_in_three() -> None:
    assert QUALITY_CACHE_INTERVALS == {"best": 1, "draft": 3}
    assert AnimateOptions(cache_interval=3).quality == "draft"
    assert AnimateOptions().quality == "best"


@pytest.fixture(scope="module")
def engine(tiny_svd_dir: Path) -> SVDEngine:
    engine = SVDEngine([str(tiny_svd_dir)], device="cpu", resolution=256)
    engine.load()
    return engine


def clip(engine: SVDEngine, image: Image.Image, **overrides: Any) -> Any:
    values: dict[str, Any] = {"num_inference_steps": 6, "seed": 5, **overrides}
    return engine.run(image, AnimateOptions(**values), lambda _p: None, lambda: False)


def test_a_draft_clip_has_the_frames_asked_for_and_runs_fewer_deep_steps(
    engine: SVDEngine, picture: Picture
) -> None:
    image = picture(128, 64)
    pipe = engine.pipeline()
    deep = Calls(pipe.unet.mid_block.resnets[0])
    outer = Calls(pipe.unet.up_blocks[-1].resnets[0])
    best = clip(engine, image)
    assert (deep.count, outer.count) == (6, 6)
    draft = clip(engine, image, cache_interval=3)
    # Steps 0 and 3 ran the whole UNet; the other four only its outer level.
    assert (deep.count, outer.count) == (6 + 2, 6 + 6)
    assert draft.frames.shape == best.frames.shape == (FRAMES, 64, 128, 3)
    assert draft.seed == best.seed
    # Reproducible from its settings, and close to (but not) the full-quality clip.
    again = clip(engine, image, cache_interval=3)
    assert np.array_equal(again.frames, draft.frames)
    difference = np.abs(draft.frames.astype(int) - best.frames.astype(int))
    assert 0 < difference.mean() < 40


def test_a_cancelled_draft_leaves_the_next_full_clip_untouched(
    engine: SVDEngine, picture: Picture
) -> None:
    from generation.errors import Cancelled

    image = picture(128, 64, seed=2)
    before = clip(engine, image)
    steps: list[int] = []

    def cancel_after_two() -> bool:
        return len(steps) >= 2

    with pytest.raises(Cancelled):
        engine.run(
            image,
            AnimateOptions(num_inference_steps=6, seed=5, cache_interval=3),
            lambda p: steps.append(p.step) if p.phase == "denoising" else None,
            cancel_after_two,
        )
    assert engine.pipeline().unet is not None
    after = clip(engine, image)
    assert np.array_equal(after.frames, before.frames)

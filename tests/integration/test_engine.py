"""The real `SVDEngine` on the tiny random SVD model, loaded with `from_pretrained` on the CPU.

Clips run 2 denoising steps on 4 frames. The size test uses the clip sizes at RESOLUTION=256
(256x144 and 144x256); the behaviour tests use 128x64 pictures, a quarter of the pixels, because
the engine takes any size that is a multiple of 8 and the CPU time is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

import generation.engine as engine_module
from generation.engine import SVDEngine
from generation.errors import Cancelled, GenerationFailed, GPUUnusable, InvalidOptions
from generation.models import PretrainedLoader
from generation.options import AnimateOptions
from generation.placement import channels_last, compile_counters, fuse_attention_projections
from generation.plans import PlanSettings
from generation.results import Progress

FRAMES = 4  # the tiny model's own (tiny_svd_dir)
FRAMES_B = 3  # the second tiny model's (tiny_svd_dir_b)
STEPS = 2
Picture = Callable[..., Image.Image]


def options(**overrides: Any) -> AnimateOptions:
    values: dict[str, Any] = {"num_inference_steps": STEPS, "seed": 1}
    values.update(overrides)
    return AnimateOptions(**values)


@pytest.fixture(scope="module")
def small(picture: Picture) -> Image.Image:
    return picture(128, 64)


def run(engine: SVDEngine, image: Image.Image, **overrides: Any) -> Any:
    return engine.run(image, options(**overrides), lambda _p: None, lambda: False)


@pytest.fixture(scope="module")
def engine(tiny_svd_dir: Path) -> SVDEngine:
    engine = SVDEngine([str(tiny_svd_dir)], device="cpu", resolution=256)
    engine.load()
    return engine


class FailOnce:
    """A `pipeline_call` that raises `error` on its first `times` calls, then calls through."""

    def __init__(self, error: BaseException, times: int = 1) -> None:
        self.error = error
        self.times = times
        self.calls = 0

    def __call__(self, pipe: StableVideoDiffusionPipeline, kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return pipe(**kwargs)


def test_clip_has_the_models_frames_at_the_pictures_size(
    engine: SVDEngine, picture: Picture
) -> None:
    landscape = run(engine, picture(256, 144))
    assert landscape.frames.shape == (FRAMES, 144, 256, 3)
    assert landscape.frames.dtype == np.uint8
    portrait = run(engine, picture(144, 256))
    assert portrait.frames.shape == (FRAMES, 256, 144, 3)
    assert (landscape.model, landscape.plan, landscape.fallback_from) == (
        engine.models[0],
        "cpu",
        None,
    )
    assert landscape.seconds > 0 and landscape.load_seconds == 0.0
    assert engine.frames_for(None) == FRAMES


def test_same_seed_same_frames_other_seed_other_frames(
    engine: SVDEngine, small: Image.Image
) -> None:
    first = run(engine, small, seed=42)
    again = run(engine, small, seed=42)
    drawn = run(engine, small, seed=None)  # a random seed, reported back
    assert first.seed == again.seed == 42
    np.testing.assert_array_equal(first.frames, again.frames)
    assert drawn.seed != 42
    assert np.abs(first.frames.astype(int) - drawn.frames.astype(int)).mean() > 1.0


def test_frames_are_bit_for_bit_the_pipelines_own(
    engine: SVDEngine, tiny_svd_dir: Path, small: Image.Image
) -> None:
    # What the seed recipe gets from diffusers with the same seed: the engine changes nothing
    # the user asked for (it only decodes itself, to report the phase).
    bare: Any = StableVideoDiffusionPipeline.from_pretrained(tiny_svd_dir)
    bare.set_progress_bar_config(disable=True)
    pil_frames = bare(
        small,
        height=small.height,
        width=small.width,
        num_inference_steps=STEPS,
        decode_chunk_size=8,
        generator=torch.Generator().manual_seed(9),
    ).frames[0]
    expected = np.stack([np.asarray(frame) for frame in pil_frames])
    np.testing.assert_array_equal(run(engine, small, seed=9).frames, expected)


def test_progress_reports_every_step_then_the_decode(engine: SVDEngine, small: Image.Image) -> None:
    seen: list[Progress] = []
    engine.run(small, options(num_inference_steps=3), seen.append, lambda: False)
    denoising = [p for p in seen if p.phase == "denoising"]
    decoding = [p for p in seen if p.phase == "decoding"]
    assert [(p.step, p.total) for p in denoising] == [(1, 3), (2, 3), (3, 3)]
    assert decoding[0].step == 0 and decoding[-1].step == decoding[-1].total >= 1
    assert seen.index(decoding[0]) > seen.index(denoising[-1])  # decode comes after the steps


def test_decoding_in_chunks_reports_each_chunk(engine: SVDEngine, small: Image.Image) -> None:
    seen: list[Progress] = []
    result = engine.run(small, options(decode_chunk_size=2), seen.append, lambda: False)
    assert [(p.step, p.total) for p in seen if p.phase == "decoding"] == [(0, 2), (1, 2), (2, 2)]
    assert result.frames.shape[0] == FRAMES


def test_cancel_stops_within_one_step(engine: SVDEngine, small: Image.Image) -> None:
    seen: list[Progress] = []

    def cancelled() -> bool:
        return any(p.step >= 2 for p in seen)

    with pytest.raises(Cancelled):
        engine.run(small, options(num_inference_steps=10), seen.append, cancelled)
    assert [p.step for p in seen] == [1, 2]
    assert all(p.phase == "denoising" for p in seen)
    # The engine is usable right after.
    assert run(engine, small).frames.shape[0] == FRAMES


def test_cancel_before_the_start_runs_nothing(engine: SVDEngine, small: Image.Image) -> None:
    seen: list[Progress] = []
    with pytest.raises(Cancelled):
        engine.run(small, options(), seen.append, lambda: True)
    assert seen == []


def test_an_unconfigured_model_is_refused(engine: SVDEngine, small: Image.Image) -> None:
    with pytest.raises(InvalidOptions) as caught:
        run(engine, small, model="someone/else")
    assert caught.value.field == "model"


def test_out_of_memory_steps_down_and_retries_with_the_same_seed(
    tiny_svd_dir: Path, small: Image.Image
) -> None:
    fail_once = FailOnce(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB"))
    # A 1 GiB budget simulates a small GPU: the planner picks "full" (no room to compile).
    engine = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        vram_budget_gib=1.0,
        pipeline_call=fail_once,
    )
    engine.load()
    assert engine.plan_for(None) == "full"
    seen: list[Progress] = []
    result = engine.run(small, options(seed=5), seen.append, lambda: False)
    assert (result.plan, result.fallback_from) == ("offload", "full")
    assert result.seed == 5 and result.frames.shape == (FRAMES, 64, 128, 3)
    assert result.load_seconds > 0  # the reload under the smaller plan
    assert Progress("loading") in seen
    # The smaller plan stays, and the same seed makes the same clip without any failure.
    again = run(engine, small, seed=5)
    assert (again.plan, again.fallback_from, again.load_seconds) == ("offload", None, 0.0)
    np.testing.assert_array_equal(result.frames, again.frames)


def test_a_plain_runtime_error_saying_out_of_memory_counts_too(
    tiny_svd_dir: Path, small: Image.Image
) -> None:
    oom = RuntimeError("CUDA error: out of memory")
    engine = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        memory_mode="offload_chunked",
        pipeline_call=FailOnce(oom),
    )
    result = run(engine, small)
    assert (result.plan, result.fallback_from) == ("sequential", "offload_chunked")


def test_running_out_of_memory_in_the_decode_keeps_the_denoised_clip(
    tiny_svd_dir: Path, small: Image.Image
) -> None:
    # The decode needs the most memory at once; a step-down threw the denoising away and made
    # it again under a smaller plan, and every later clip paid that smaller plan's price.
    decoded: list[int] = []

    def loader(model: str, dtype: torch.dtype) -> Any:
        pipe = PretrainedLoader()(model, dtype)
        decode = pipe.vae.decode

        def tight(latents: torch.Tensor, num_frames: int) -> Any:
            decoded.append(num_frames)
            if num_frames > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
            return decode(latents, num_frames=num_frames)

        pipe.vae.decode = tight
        return pipe

    denoise = FailOnce(RuntimeError("unused"), times=0)
    engine = SVDEngine(
        [str(tiny_svd_dir)], device="cpu", memory_mode="full", loader=loader, pipeline_call=denoise
    )
    engine.load()
    assert decoded == [], decoded
    result = run(engine, small, seed=5)
    assert (result.plan, result.fallback_from, result.load_seconds) == ("full", None, 0.0)
    assert result.frames.shape == (FRAMES, 64, 128, 3) and denoise.calls == 1
    assert decoded == [FRAMES, FRAMES // 2, *[1] * FRAMES]
    decoded.clear()
    run(engine, small, seed=6)  # the next clip starts from the chunk that fitted
    assert decoded == [1] * FRAMES and denoise.calls == 2


def test_running_out_of_memory_while_reloading_steps_down_further(
    tiny_svd_dir: Path, small: Image.Image
) -> None:
    loads: list[str] = []

    def loader(model: str, dtype: torch.dtype) -> Any:
        loads.append(model)
        if len(loads) == 2:  # the reload under "offload" does not fit either
            raise torch.OutOfMemoryError("CUDA out of memory")
        return PretrainedLoader()(model, dtype)

    engine = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        memory_mode="full",
        loader=loader,
        pipeline_call=FailOnce(torch.OutOfMemoryError("CUDA out of memory")),
    )
    result = run(engine, small)
    assert (result.plan, result.fallback_from, len(loads)) == ("offload_chunked", "full", 3)


def test_out_of_memory_on_the_last_plan_fails_cleanly(
    tiny_svd_dir: Path, small: Image.Image
) -> None:
    always = FailOnce(torch.OutOfMemoryError("CUDA out of memory"), times=99)
    engine = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        memory_mode="sequential",
        pipeline_call=always,
    )
    with pytest.raises(GenerationFailed) as caught:
        run(engine, small)
    assert caught.value.reason == "oom"
    assert "out of memory" in caught.value.user_message
    assert "CUDA" not in caught.value.user_message and "GiB" not in caught.value.user_message
    assert always.calls == 1


def test_other_errors_fail_with_a_safe_message_and_keep_the_cause(
    tiny_svd_dir: Path, small: Image.Image
) -> None:
    broken = FailOnce(ValueError("shapes (2, 8) and (3, 8) do not match"))
    engine = SVDEngine(
        [str(tiny_svd_dir)], device="cpu", resolution=256, memory_mode="full", pipeline_call=broken
    )
    with pytest.raises(GenerationFailed) as caught:
        run(engine, small)
    assert caught.value.reason == "error"
    assert "shapes" not in caught.value.user_message
    assert isinstance(caught.value.__cause__, ValueError)
    assert engine.plan_for(None) == "full"  # no step-down for a bug


def test_an_error_that_broke_the_gpu_is_told_apart_from_a_clips_bad_luck(
    tiny_svd_dir: Path, small: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the CPU a context never breaks; on a GPU the probe after the error says whether it did.
    assert not engine_module.gpu_unusable("cpu")
    monkeypatch.setattr(engine_module, "gpu_unusable", lambda _device: True)
    illegal = RuntimeError("CUDA error: an illegal memory access was encountered")
    engine = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        memory_mode="full",
        pipeline_call=FailOnce(illegal),
    )
    with pytest.raises(GPUUnusable) as caught:
        run(engine, small)
    assert "illegal memory access" in caught.value.detail
    assert "restarting" in caught.value.user_message


def test_a_load_that_broke_the_gpu_is_not_taken_for_a_missing_model(
    tiny_svd_dir: Path, small: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warm-up kernel of the compiled plan that breaks the context: every clip after it would
    # fail with "could not be loaded", and a smaller plan cannot run on that context either.
    monkeypatch.setattr(engine_module, "gpu_unusable", lambda _device: True)

    def loader(model: str, dtype: torch.dtype) -> Any:
        raise RuntimeError("CUDA error: unspecified launch failure")

    engine = SVDEngine([str(tiny_svd_dir)], device="cpu", memory_mode="full", loader=loader)
    with pytest.raises(GPUUnusable) as caught:
        run(engine, small)
    assert "unspecified launch failure" in caught.value.detail


def test_several_models_load_on_demand_and_stay_resident(
    tiny_svd_dir: Path, tiny_svd_dir_b: Path, small: Image.Image
) -> None:
    default, other = str(tiny_svd_dir), str(tiny_svd_dir_b)
    engine = SVDEngine([default, other], device="cpu", resolution=256)
    engine.load()
    assert engine.loaded_models() == [default]
    # The other model's frame count is read from its config at start-up, without loading it,
    # so the event loop can have it without waiting.
    assert engine.known_frames(other) == FRAMES_B
    assert engine.frames_for(other) == FRAMES_B
    assert engine.loaded_models() == [default]

    seen: list[Progress] = []
    switched = engine.run(small, options(model=other), seen.append, lambda: False)
    assert switched.model == other and switched.frames.shape[0] == FRAMES_B
    assert switched.load_seconds > 0 and seen[0] == Progress("loading")
    assert run(engine, small, model=other).load_seconds == 0.0
    back = run(engine, small)
    assert (back.model, back.load_seconds, back.frames.shape[0]) == (default, 0.0, FRAMES)
    assert sorted(engine.loaded_models()) == sorted([default, other])


def test_with_room_for_one_model_a_switch_evicts_the_other(
    tiny_svd_dir: Path, tiny_svd_dir_b: Path, small: Image.Image
) -> None:
    default, other = str(tiny_svd_dir), str(tiny_svd_dir_b)
    engine = SVDEngine([default, other], device="cpu", resolution=256, max_resident=1)
    engine.load()
    assert run(engine, small, model=other).load_seconds > 0
    assert engine.loaded_models() == [other]
    assert run(engine, small).load_seconds > 0  # the default was evicted: loaded again
    assert engine.loaded_models() == [default]


def test_a_model_that_cannot_be_loaded_fails_with_a_safe_message(tmp_path: Path) -> None:
    engine = SVDEngine([str(tmp_path / "nowhere")], device="cpu", local_files_only=True)
    with pytest.raises(GenerationFailed) as caught:
        engine.load()
    assert caught.value.reason == "load"
    assert str(tmp_path) not in caught.value.user_message


def test_fused_attention_and_channels_last_compute_the_same_function(tiny_svd_dir: Path) -> None:
    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_svd_dir)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, FRAMES, 8, 8, 16, generator=generator)
    embeddings = torch.randn(2, 1, 32, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    latents = torch.randn(FRAMES, 4, 8, 16, generator=generator)
    with torch.no_grad():
        unet_before = pipe.unet(sample, 1.5, embeddings, time_ids).sample
        vae_before = pipe.vae.decode(latents, num_frames=FRAMES).sample
        fused = fuse_attention_projections(pipe.unet) + fuse_attention_projections(pipe.vae)
        channels_last(pipe.unet)
        channels_last(pipe.vae)
        unet_after = pipe.unet(sample, 1.5, embeddings, time_ids).sample
        vae_after = pipe.vae.decode(latents, num_frames=FRAMES).sample
    assert fused > 0
    torch.testing.assert_close(unet_after, unet_before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vae_after, vae_before, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fast_plan_compiles_at_load_and_never_again(
    tiny_svd_dir: Path, engine: SVDEngine, picture: Picture
) -> None:
    # "eager" checks dynamo's graph capture and guards without minutes of C++ compilation on two
    # CPU cores; inductor's kernels are checked on a GPU by bench/engine.py.
    fast = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        memory_mode="fast",
        plan_settings=PlanSettings(compile_backend="eager"),
    )
    fast.load()  # warms up landscape and portrait
    assert fast.plan_for(None) == "fast" and fast.compile_seconds() > 0
    compiled = compile_counters()
    assert compiled["unique_graphs"] >= 4  # UNet and VAE decoder, two shapes each

    # New pictures, seeds, motion, fps and noise in both orientations, best and draft quality
    # (warmed up too): nothing recompiles.
    landscape = picture(256, 144, seed=3)
    clip = run(fast, landscape, seed=7, motion_bucket_id=200, fps=12, noise_aug_strength=0.1)
    run(fast, picture(144, 256, seed=4), seed=8, motion_bucket_id=30)
    draft = run(fast, picture(144, 256, seed=5), seed=9, num_inference_steps=4, cache_interval=3)
    run(fast, picture(256, 144, seed=6), seed=11, cache_interval=2)
    assert compile_counters() == compiled
    assert draft.plan == "fast" and draft.frames.shape == (FRAMES, 256, 144, 3)
    assert clip.plan == "fast" and clip.frames.shape == (FRAMES, 144, 256, 3)

    # And the same function as the eager CPU plan: fused projections only reorder float sums.
    eager = run(engine, landscape, seed=7, motion_bucket_id=200, fps=12, noise_aug_strength=0.1)
    difference = np.abs(clip.frames.astype(int) - eager.frames.astype(int))
    assert difference.max() <= 2


class FailCompiled:
    """A `pipeline_call` that raises `error` whenever the UNet is a compiled one: the fast
    plan's warm-up fails, any other plan works."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.failed = 0

    def __call__(self, pipe: StableVideoDiffusionPipeline, kwargs: dict[str, Any]) -> Any:
        if getattr(pipe.unet, "_compiled_call_impl", None) is not None:
            self.failed += 1
            raise self.error
        return pipe(**kwargs)


@pytest.mark.parametrize(
    "error",
    [
        # What Triton says at its first kernel on a host without a compiler (a CUDA runtime
        # image without gcc and python3-dev).
        RuntimeError("Failed to find C compiler. Please specify via CC environment variable."),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
    ids=["no compiler", "out of memory"],
)
def test_a_fast_plan_that_cannot_be_set_up_gives_way_to_the_uncompiled_one(
    tiny_svd_dir: Path, small: Image.Image, error: BaseException
) -> None:
    failing = FailCompiled(error)
    # 80 GiB of room: the planner picks the fast plan, as on any big GPU.
    engine = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        vram_budget_gib=80.0,
        plan_settings=PlanSettings(compile_backend="eager"),
        pipeline_call=failing,
    )
    engine.load()  # no error: the bot serves clips
    assert engine.plan_for(None) == "full" and failing.failed == 1
    result = run(engine, small, seed=3)
    assert result.plan == "full" and result.frames.shape == (FRAMES, 64, 128, 3)
    assert failing.failed == 1  # the compile is not tried again for each clip


def test_a_model_whose_files_are_broken_is_not_retried_under_other_plans(
    tiny_svd_dir: Path,
) -> None:
    loads: list[str] = []

    def loader(model: str, dtype: torch.dtype) -> Any:
        loads.append(model)
        raise OSError("unet/diffusion_pytorch_model.safetensors: truncated")

    engine = SVDEngine([str(tiny_svd_dir)], device="cpu", memory_mode="fast", loader=loader)
    with pytest.raises(GenerationFailed) as caught:
        engine.load()
    assert caught.value.reason == "load" and len(loads) == 1


def test_fp16_loading_falls_back_when_a_model_has_no_fp16_variant(tiny_svd_dir: Path) -> None:
    # The tiny folder, like some repositories, has only full-precision files.
    pipe = PretrainedLoader()(str(tiny_svd_dir), torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert PretrainedLoader().num_frames(str(tiny_svd_dir)) == FRAMES


def test_a_model_folder_under_the_home_folder_loads_as_written(
    tiny_svd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SVD_MODEL=~/models/svd: found by every check, then taken for a hub id by diffusers.
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "svd").symlink_to(tiny_svd_dir, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    pipe = PretrainedLoader()("~/models/svd", torch.float32)
    assert pipe.unet.config.num_frames == FRAMES
    assert PretrainedLoader().num_frames("~/models/svd") == FRAMES


def test_a_model_folder_that_does_not_exist_is_not_looked_up_on_the_hub(tmp_path: Path) -> None:
    # Sent to the hub, "./svd-xt" would fail with a puzzling "Repo id must use alphanumeric
    # chars" (or, worse, a download of something else); the host must read the folder is missing.
    for missing in (f"{tmp_path}/svd-xt", "./svd-xt", "models/svd/xt"):
        with pytest.raises(FileNotFoundError, match=r"model folder .* does not exist"):
            PretrainedLoader(local_files_only=False)(missing, torch.float32)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_on_cuda_every_plan_makes_the_clip(tiny_svd_dir: Path, small: Image.Image) -> None:
    clips = {}
    for mode in ("full", "offload", "offload_chunked", "sequential"):
        engine = SVDEngine([str(tiny_svd_dir)], device="cuda", memory_mode=mode, resolution=256)
        result = run(engine, small, seed=3)
        assert (result.plan, result.frames.shape) == (mode, (FRAMES, 64, 128, 3))
        clips[mode] = result.frames.astype(int)
        # Draft quality under every placement (offloading plans keep the feature in RAM).
        draft = run(engine, small, seed=3, num_inference_steps=4, cache_interval=3)
        assert draft.frames.shape == result.frames.shape
        engine.close()
    # Offloading moves weights, not arithmetic: the same clip as all on the GPU.
    assert np.abs(clips["offload"] - clips["full"]).max() <= 1
    assert torch.cuda.memory_allocated() < 64 * 1024**2  # close() gave the memory back


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fast_plan_makes_the_clip_the_seed_recipe_makes(
    tiny_svd_dir: Path, engine: SVDEngine, picture: Picture
) -> None:
    # Issue 8: faster, with the same output. SVD's decoder mixes the frames within a decode
    # chunk, so the fast plan must decode in the same chunks (here 3 + 1) as plain diffusers.
    fast = SVDEngine(
        [str(tiny_svd_dir)],
        device="cpu",
        resolution=256,
        memory_mode="fast",
        plan_settings=PlanSettings(compile_backend="eager"),
        warm_portrait=False,
    )
    image = picture(256, 144, seed=2)
    expected = run(engine, image, seed=4, decode_chunk_size=3)
    got = run(fast, image, seed=4, decode_chunk_size=3)
    assert got.plan == "fast" and expected.plan != "fast"
    assert np.abs(got.frames.astype(int) - expected.frames.astype(int)).mean() < 0.05
    fast.close()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(900)
@needs_cuda
def test_on_cuda_the_fast_plan_compiles_once_and_matches_full(
    tiny_svd_dir: Path, picture: Picture
) -> None:
    image = picture(256, 144)
    full = SVDEngine([str(tiny_svd_dir)], device="cuda", memory_mode="full", resolution=256)
    expected = run(full, image, seed=4).frames.astype(int)
    full.close()
    fast = SVDEngine(
        [str(tiny_svd_dir)],
        device="cuda",
        memory_mode="fast",
        resolution=256,
        plan_settings=PlanSettings(compile_mode="default"),
    )
    fast.load()
    compiled = compile_counters()
    got = run(fast, image, seed=4)
    run(fast, picture(144, 256, seed=2), seed=5, motion_bucket_id=250)
    assert compile_counters() == compiled
    assert got.plan == "fast"
    assert np.abs(got.frames.astype(int) - expected).mean() < 2.0


def test_a_host_without_a_gpu_is_warned_at_full_size_and_not_at_a_small_one(
    tiny_svd_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DEVICE=auto on a machine whose GPU is not visible (no --gpus, a CPU-only torch).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="generation.engine"):
        SVDEngine([str(tiny_svd_dir)], device="auto", resolution=1024)
    (warning,) = [r.getMessage() for r in caplog.records if "no CUDA GPU" in r.getMessage()]
    assert "RESOLUTION=512" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="generation.engine"):
        SVDEngine([str(tiny_svd_dir)], device="auto", resolution=512)
        SVDEngine([str(tiny_svd_dir)], device="cpu", resolution=1024)  # chosen: no warning
    assert not [r for r in caplog.records if "no CUDA GPU" in r.getMessage()]

"""The memory planner's choices for given VRAM figures (no GPU, no model)."""

from __future__ import annotations

import pytest

from generation.plans import (
    GPU_PLANS,
    Footprint,
    PlanSettings,
    Workload,
    choose_plan,
    estimate_peak_gib,
    make_plan,
    next_plan,
    resident_capacity,
)

SVD = Footprint.svd_fp16()
XT_LANDSCAPE = Workload(frames=25, width=1024, height=576)
SVD_14 = Workload(frames=14, width=1024, height=576)


def pick(free_gib: float | None, workload: Workload = XT_LANDSCAPE, **kwargs: object) -> str:
    device = "cpu" if free_gib is None else "cuda"
    plan = choose_plan(device=device, free_gib=free_gib, footprint=SVD, workload=workload, **kwargs)  # type: ignore[arg-type]
    return plan.name


@pytest.mark.parametrize(
    ("free_gib", "expected"),
    [
        (79.0, "fast"),  # H100 80 GB
        (23.0, "fast"),  # 24 GB card
        (16.5, "full"),  # not enough room to compile in
        (15.5, "full"),  # 16 GB card
        (15.0, "offload"),
        (13.0, "offload"),
        (11.5, "offload_chunked"),  # 12 GB card
        (9.0, "offload_chunked"),
        (7.5, "sequential"),  # 8 GB card
        (4.0, "sequential"),  # nothing fits: the last resort anyway
    ],
)
def test_xt_at_1024_gets_the_roomiest_plan_that_fits(free_gib: float, expected: str) -> None:
    assert pick(free_gib) == expected


def test_estimates_follow_the_published_figures() -> None:
    # svd-facts.md: ~13 GiB all on GPU with decode chunk 8, ~10.6 offloaded, ~7.3 chunked.
    full = estimate_peak_gib(make_plan("full", "cuda"), SVD, XT_LANDSCAPE)
    offload = estimate_peak_gib(make_plan("offload", "cuda"), SVD, XT_LANDSCAPE)
    chunked = estimate_peak_gib(make_plan("offload_chunked", "cuda"), SVD, XT_LANDSCAPE)
    assert 12.5 <= full <= 14.5
    assert 10.0 <= offload <= 11.5
    assert 7.0 <= chunked <= 8.5
    sequential = estimate_peak_gib(make_plan("sequential", "cuda"), SVD, XT_LANDSCAPE)
    assert sequential < 8.0  # the seed's claim for the smallest plan


def test_each_step_down_needs_less_memory() -> None:
    peaks = [estimate_peak_gib(make_plan(n, "cuda"), SVD, XT_LANDSCAPE) for n in GPU_PLANS]
    assert peaks == sorted(peaks, reverse=True)


def test_fewer_frames_and_smaller_clips_fit_in_less() -> None:
    assert pick(11.0) == "offload_chunked"
    assert pick(11.0, SVD_14) == "offload"
    small = Workload(frames=25, width=512, height=320)
    assert pick(9.0, small) == "full"


def test_portrait_needs_the_same_as_landscape() -> None:
    portrait = Workload(frames=25, width=576, height=1024)
    for name in GPU_PLANS:
        plan = make_plan(name, "cuda")
        assert estimate_peak_gib(plan, SVD, portrait) == estimate_peak_gib(plan, SVD, XT_LANDSCAPE)


def test_no_gpu_means_the_cpu_plan_in_fp32() -> None:
    plan = choose_plan(device="cpu", free_gib=None, footprint=SVD, workload=XT_LANDSCAPE)
    assert (plan.name, plan.dtype, plan.compile) == ("cpu", "float32", False)
    assert next_plan(plan) is None


@pytest.mark.parametrize("mode", GPU_PLANS)
def test_memory_mode_overrides_the_planner(mode: str) -> None:
    assert pick(79.0, memory_mode=mode) == mode
    assert pick(4.0, memory_mode=mode) == mode


def test_step_down_order_and_its_end() -> None:
    plan = make_plan("fast", "cuda")
    names = [plan.name]
    while (stepped := next_plan(plan)) is not None:
        plan = stepped
        names.append(plan.name)
    assert names == ["fast", "full", "offload", "offload_chunked", "sequential"]


def test_plans_carry_what_they_promise() -> None:
    fast = make_plan("fast", "cuda", PlanSettings(fast_dtype="bfloat16", compile_mode="default"))
    assert (fast.dtype, fast.compile, fast.compile_mode, fast.placement) == (
        "bfloat16",
        True,
        "default",
        "device",
    )
    full = next_plan(fast)
    assert full is not None
    # Stepping down from bf16 returns to the published fp16 weights, uncompiled.
    assert (full.dtype, full.compile) == ("float16", False)
    chunked = make_plan("offload_chunked", "cuda")
    assert chunked.placement == "model_offload"
    assert chunked.forward_chunking and chunked.decode_chunk_size <= 2
    assert make_plan("sequential", "cuda").placement == "sequential_offload"


def test_only_the_fast_plan_carries_the_compile_cache() -> None:
    settings = PlanSettings(compile_cache_dir="/data/compile-cache")
    assert make_plan("fast", "cuda", settings).compile_cache_dir == "/data/compile-cache"
    assert make_plan("fast", "cpu", settings).compile_cache_dir == "/data/compile-cache"
    assert make_plan("full", "cuda", settings).compile_cache_dir is None


def test_one_shot_callers_can_keep_auto_off_the_fast_plan() -> None:
    # svd-animate makes one clip: minutes of compiling would cost more than they save.
    one_shot = PlanSettings(auto_compile=False)
    plan = choose_plan(
        device="cuda", free_gib=79.0, footprint=SVD, workload=XT_LANDSCAPE, settings=one_shot
    )
    assert plan.name == "full"
    small = choose_plan(
        device="cuda", free_gib=9.0, footprint=SVD, workload=XT_LANDSCAPE, settings=one_shot
    )
    assert small.name == "offload_chunked"
    # Asked for by name, it is still given.
    forced = choose_plan(
        device="cuda",
        free_gib=79.0,
        footprint=SVD,
        workload=XT_LANDSCAPE,
        memory_mode="fast",
        settings=one_shot,
    )
    assert forced.name == "fast"


def test_fast_plan_on_a_cpu_compiles_in_fp32_with_inductors_default_mode() -> None:
    fast = make_plan("fast", "cpu")
    assert (fast.dtype, fast.compile_mode) == ("float32", "default")


def test_resident_models_follow_free_memory() -> None:
    full = make_plan("full", "cuda")
    # 80 GB: the active model's full plan (~14 GiB) plus a second model's weights (~4.2 GiB).
    assert (
        resident_capacity(free_gib=79, plan=full, footprint=SVD, workload=XT_LANDSCAPE, models=2)
        == 2
    )
    # 16 GB: only the active one.
    assert (
        resident_capacity(free_gib=15.5, plan=full, footprint=SVD, workload=XT_LANDSCAPE, models=2)
        == 1
    )
    # Offloaded weights live in RAM: 64 GiB free holds three models' weights.
    offload = make_plan("offload", "cuda")
    assert (
        resident_capacity(free_gib=64, plan=offload, footprint=SVD, workload=XT_LANDSCAPE, models=3)
        == 3
    )
    # Never fewer than one, never more than configured.
    assert (
        resident_capacity(free_gib=1, plan=offload, footprint=SVD, workload=XT_LANDSCAPE, models=3)
        == 1
    )


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError):
        make_plan("turbo", "cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pick(79.0, memory_mode="turbo")

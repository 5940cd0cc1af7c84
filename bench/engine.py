"""Seconds per clip and peak memory of the engine's memory plans, beside the seed recipe.

    python -m bench.engine --tiny [--repeats 5]            # CPU: the engine's overhead
    python -m bench.engine --gpu [--plans seed,fast,full]   # CUDA: full-size SVD-XT, every plan

--tiny (CPU). The tiny random model (generation/tiny.py), saved and loaded with `from_pretrained`.
The bare pipeline call as the seed recipe makes it (`pipe(image, decode_chunk_size=8)`, PIL
frames) against `SVDEngine.run` on the same picture, seed and steps, interleaved so that a busy
machine slows both alike; reports the engine's overhead and whether the frames are identical.

--gpu (CUDA). The full-size SVD-XT architecture with random weights, no download: the UNet's
default config (which is SVD-XT's), the VAE with SVD's config, a ViT-H/14 CLIP image encoder,
SVD's Euler scheduler. Built once (seeded) and copied for each plan, so every plan runs the same
weights. For the seed recipe (fp16, all on the GPU, decode_chunk_size=8) and each plan
(`--plans`): seconds per clip (median of `--repeats` after `--warmup`), UNet seconds per step,
VAE decode seconds, peak VRAM, load and compile time; for the fast plan also dynamo's recompile
count over new pictures, seeds and motion values in both orientations (must be 0), and one UNet
call against the fp16 eager UNet on the same inputs (relative error; NaN fails). Results are
written after each plan (`--out`), and plans that would start after `--max-seconds` are skipped
and listed, so a run that must fit a time limit still reports what it measured.

`--gpu --arch tiny --device cpu` runs the same code path with the tiny model on a CPU (a smoke
test of this script where there is no GPU); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import json
import logging
import math
import os
import platform
import resource
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from generation.engine import SVDEngine
from generation.images import target_size
from generation.models import Pipeline
from generation.options import AnimateOptions
from generation.placement import compile_counters
from generation.plans import (
    GIB,
    GPU_PLANS,
    Footprint,
    PlanSettings,
    Workload,
    choose_plan,
)
from generation.results import Progress
from generation.tiny import assemble_pipeline, build_tiny_pipeline

MODEL = "random/svd-xt"  # a label: the loader below builds the weights
SEED_RECIPE = "seed"
# Frames by clip index (each index: its own picture, seed and motion, the same in every row).
Clips = dict[int, np.ndarray]


def clip_seed(index: int) -> int:
    return 1000 + index


# Different conditioning for every timed clip: none of it may cause a recompile.
MOTIONS = ((127, 7, 0.02), (180, 6, 0.1), (60, 10, 0.05), (200, 12, 0.3))


# --- models --------------------------------------------------------------------------------


def build_svd_xt(device: str, seed: int = 0) -> Pipeline:
    """SVD-XT's architecture with random weights (fp32), built on `device`."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        # The defaults are SVD-XT's config (25 frames, 320/640/1280/1280, cross-attention 1024).
        unet = UNetSpatioTemporalConditionModel(sample_size=96)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=768,
            force_upcast=True,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=16,
                patch_size=14,
                image_size=224,
                projection_dim=1024,
                hidden_act="gelu",
            )
        )
    return assemble_pipeline(unet, vae, image_encoder)


def parameter_counts(pipe: Pipeline) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "image_encoder")
    }


class CopyLoader:
    """A `PipelineLoader` that hands out copies of one pipeline kept on the CPU, so every plan
    runs the same weights and no plan pays for building them."""

    def __init__(self, master: Pipeline) -> None:
        self.master = master

    def __call__(self, model: str, dtype: torch.dtype) -> Pipeline:
        pipe = copy.deepcopy(self.master)
        if pipe.unet.dtype != dtype:
            pipe.to(dtype=dtype)
        return pipe

    def num_frames(self, model: str) -> int:
        return int(self.master.unet.config.num_frames)


# --- measuring -----------------------------------------------------------------------------


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


class PhaseClock:
    """An `on_step` that timestamps each progress report (after the GPU has caught up)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.marks: list[tuple[str, int, float]] = []
        self.started = time.perf_counter()

    def start(self) -> None:
        self.sync()
        self.marks.clear()
        self.started = time.perf_counter()

    def __call__(self, progress: Progress) -> None:
        self.sync()
        self.marks.append((progress.phase, progress.step, time.perf_counter()))

    def step_seconds(self) -> float | None:
        """Median time between denoising steps: one UNet call (x2 for guidance) + scheduler."""
        times = [t for phase, _step, t in self.marks if phase == "denoising"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return statistics.median(gaps) if gaps else None

    def decode_seconds(self, ended: float) -> float | None:
        decoding = [t for phase, _step, t in self.marks if phase == "decoding"]
        if decoding:
            return decoding[-1] - decoding[0]
        denoising = [t for phase, _step, t in self.marks if phase == "denoising"]
        # The seed recipe reports no decode phase: what follows the last step is the decode
        # (and the conversion to PIL images).
        return ended - denoising[-1] if denoising else None


@dataclass
class Row:
    name: str
    clip_seconds: list[float] = field(default_factory=list)
    # CPU time of this process (all its threads): the work done, however busy the machine is.
    cpu_seconds: list[float] = field(default_factory=list)
    unet_step_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)
    peak_vram_gib: float | None = None
    peak_reserved_gib: float | None = None
    load_seconds: float = 0.0
    compile_seconds: float | None = None
    # Inductor graphs the warm-up found in --compile-cache instead of compiling them.
    graphs_from_cache: int | None = None
    recompiles: int | None = None
    unet_relative_error: float | None = None
    # Against float32 eager on the same (fp16-rounded) weights and inputs, TF32 off: the fast
    # plan's own error, and fp16 eager's beside it for scale (`fp32_errors`: name -> error).
    fp32_errors: dict[str, float] = field(default_factory=dict)
    # The seed the agreement check drew its random inputs from (fresh every run).
    check_seed: int | None = None
    # The compiled VAE decoder against the eager one (fast plan), like the UNet's.
    vae_relative_error: float | None = None
    # The plan the engine ended up with when it is not the one asked for (a compile that failed
    # falls back to "full"): its figures are not this row's plan's, and the run fails.
    fell_back_to: str | None = None
    # Mean |frames - the seed recipe's| (of 255) over the clips both made from the same picture,
    # seed and motion: issue 8's "same output" (fp16 noise is well under 1).
    seed_recipe_gap: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.clip_seconds) if self.clip_seconds else float("nan")

    def summary(self) -> dict[str, Any]:
        def med(values: list[float]) -> float | None:
            return round(statistics.median(values), 4) if values else None

        data = asdict(self)
        data.update(
            median_seconds=round(self.median, 3),
            median_unet_step_seconds=med(self.unet_step_seconds),
            median_decode_seconds=med(self.decode_seconds),
            median_cpu_seconds=med(self.cpu_seconds),
        )
        return data


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def record_peak(row: Row, device: str) -> None:
    if device.startswith("cuda"):
        row.peak_vram_gib = max(row.peak_vram_gib or 0.0, torch.cuda.max_memory_allocated() / GIB)
        row.peak_reserved_gib = max(
            row.peak_reserved_gib or 0.0, torch.cuda.max_memory_reserved() / GIB
        )


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth colour gradients and fine detail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    base = 127 + 100 * np.stack(
        [np.sin(x / width * 6 + phase[0]), np.cos(y / height * 5 + phase[1]), np.sin((x + y) / 90)],
        axis=-1,
    )
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


# --- the GPU (or smoke-test) benchmark -------------------------------------------------------


def bench_seed_recipe(
    loader: CopyLoader, device: str, size: tuple[int, int], args: argparse.Namespace
) -> tuple[Row, Clips]:
    """diffusers as its docs show it: fp16, everything on the GPU, decode_chunk_size=8. Each
    clip (warm-up too) from the picture, seed and motion the plans' clip of its index has, so
    their frames can be compared; returned by index."""
    row = Row(SEED_RECIPE, note="pipe(image, decode_chunk_size=8).frames[0], fp16, all on GPU")
    sync = synchronizer(device)
    started = time.perf_counter()
    pipe = loader(MODEL, torch.float16 if device.startswith("cuda") else torch.float32)
    pipe.to(device)
    sync()
    row.load_seconds = time.perf_counter() - started
    width, height = size
    clips: Clips = {}
    # The reserved peak starts from what is reserved: the blocks a load or warm-up left in the
    # caching allocator go first, once, not before each clip (the bot never empties it between
    # clips, and a clip that rebuilt it would be timed slower than the bot's).
    free_memory(device)
    for index in range(args.warmup + args.repeats):
        motion, fps, noise = MOTIONS[index % len(MOTIONS)]
        clock = PhaseClock(sync)

        def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            clock(Progress("denoising", i + 1, args.steps))  # noqa: B023 (called within the loop)
            return tensors

        image = picture(width, height, seed=index)  # as time_clips makes it
        reset_peak(device)
        clock.start()
        frames = pipe(
            image,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            decode_chunk_size=8,
            motion_bucket_id=motion,
            fps=fps,
            noise_aug_strength=noise,
            generator=torch.manual_seed(clip_seed(index)),
            callback_on_step_end=on_step_end,
        ).frames[0]
        sync()
        ended = time.perf_counter()
        record_peak(row, device)
        clips[index] = np.stack([np.asarray(frame.convert("RGB")) for frame in frames])
        if index >= args.warmup:
            row.clip_seconds.append(ended - clock.started)
            step = clock.step_seconds()
            decode = clock.decode_seconds(ended)
            if step is not None:
                row.unet_step_seconds.append(step)
            if decode is not None:
                row.decode_seconds.append(decode)
    del pipe
    free_memory(device)
    return row, clips


def bench_plan(
    plan: str,
    loader: CopyLoader,
    device: str,
    args: argparse.Namespace,
    checkpoint: Callable[[Row], None] = lambda _row: None,
) -> tuple[Row, SVDEngine, Clips]:
    """`checkpoint(row)` is called as figures come in (after the load and compile, after the
    clips), so that a run stopped by its time limit still reports them."""
    settings = PlanSettings(
        fast_dtype=args.fast_dtype,
        compile_mode=args.compile_mode,
        compile_backend=args.compile_backend,
        fast_decode_chunk=args.fast_decode_chunk,
        compile_cache_dir=str(args.compile_cache) if args.compile_cache else None,
    )
    engine = SVDEngine(
        [MODEL],
        device=device,
        memory_mode=plan,  # type: ignore[arg-type]
        resolution=args.resolution,
        plan_settings=settings,
        loader=loader,
        warm_portrait=args.warm == "both",
    )
    row = Row(plan)
    # Before the load: a compile cut short by the time limit still leaves a trace.
    row.note = "loading (and compiling) when the run was stopped"
    checkpoint(row)
    try:
        return _time_plan(plan, engine, row, device, args, checkpoint)
    except BaseException:
        # The caller keeps the row (its load and compile figures); the GPU memory goes now,
        # before the next plan loads (the traceback would keep the engine alive).
        engine.close()
        raise


def _time_plan(
    plan: str,
    engine: SVDEngine,
    row: Row,
    device: str,
    args: argparse.Namespace,
    checkpoint: Callable[[Row], None],
) -> tuple[Row, SVDEngine, list[np.ndarray]]:
    sync = synchronizer(device)
    started = time.perf_counter()
    engine.load()
    sync()
    row.load_seconds = time.perf_counter() - started
    row.note = ""
    got = engine.plan_for(None)
    if got != plan:
        row.fell_back_to = got
        row.note = f"FELL BACK to {got} (see the log): these are {got}'s figures"
    if plan == "fast":
        row.compile_seconds = engine.compile_seconds()
        row.graphs_from_cache = engine.compile_cache_hits()[0]
    checkpoint(row)
    before = compile_counters()
    slow = plan in ("offload_chunked", "sequential")
    clips = time_clips(engine, row, device, args, slow=slow, warmed_up=plan == "fast")
    checkpoint(row)
    if plan == "fast" and args.warm == "landscape":
        # Portrait was not compiled at start: a portrait clip would compile, not recompile.
        row.recompiles = compile_counters()["unique_graphs"] - before["unique_graphs"]
        row.note += " warmed up (and checked) for landscape only (--warm landscape)"
    elif plan == "fast":
        # A portrait clip too, then count what dynamo compiled since the warm-up: nothing.
        _w, _h, p_width, p_height = clip_shapes(args.resolution)
        options = AnimateOptions(num_inference_steps=2, seed=7, motion_bucket_id=33)
        engine.run(picture(p_width, p_height, seed=99), options, lambda _p: None, lambda: False)
        row.recompiles = compile_counters()["unique_graphs"] - before["unique_graphs"]
    if slow and not args.full_repeats:
        row.note = "1 clip, no warm-up (slow plan; --full-repeats for more)"
    return row, engine, clips


def clip_shapes(resolution: int) -> tuple[int, int, int, int]:
    """Landscape width and height, then portrait width and height."""
    return (*target_size(16, 9, resolution), *target_size(9, 16, resolution))


def time_clips(
    engine: SVDEngine,
    row: Row,
    device: str,
    args: argparse.Namespace,
    *,
    slow: bool = False,
    cache_interval: int = 1,
    warmed_up: bool = False,
) -> Clips:
    """Time `engine`'s clips into `row`; each timed clip has its own picture, seed and motion
    (the same for every plan and quality, by index). Returns the timed clips' frames by index.
    `warmed_up`: the engine's own warm-up ran every graph already (compiled plans), so no clip
    is spent on it here."""
    width, height, _pw, _ph = clip_shapes(args.resolution)
    sync = synchronizer(device)
    warmup = 0 if warmed_up or (slow and not args.full_repeats) else args.warmup
    repeats = min(args.repeats, 1) if slow and not args.full_repeats else args.repeats
    clips: Clips = {}
    free_memory(device)  # as in the seed recipe's loop
    for index in range(warmup + repeats):
        motion, fps, noise = MOTIONS[index % len(MOTIONS)]
        options = AnimateOptions(
            num_inference_steps=args.steps,
            seed=clip_seed(index),
            motion_bucket_id=motion,
            fps=fps,
            noise_aug_strength=noise,
            cache_interval=cache_interval,
        )
        image = picture(width, height, seed=index)  # made outside the timed region (as below)
        clock = PhaseClock(sync)
        reset_peak(device)
        clock.start()
        result = engine.run(image, options, clock, lambda: False)
        sync()
        ended = time.perf_counter()
        record_peak(row, device)
        if index >= warmup:
            clips[index] = result.frames
            row.clip_seconds.append(ended - clock.started)
            step, decode = clock.step_seconds(), clock.decode_seconds(ended)
            if step is not None:
                row.unet_step_seconds.append(step)
            if decode is not None:
                row.decode_seconds.append(decode)
    return clips


def bench_draft(
    plan: str, engine: SVDEngine, best: Clips, device: str, args: argparse.Namespace
) -> Row:
    """Draft quality on the same engine, pictures and seeds as its best-quality row: seconds and
    how far the frames moved (random weights: a check of the function, not of the looks)."""
    row = Row(f"{plan} draft/{args.draft_interval}")
    before = compile_counters()
    # The same timed indices as the best-quality row (pictures, seeds, motions), or the gaps
    # below compare different clips.
    clips = time_clips(
        engine, row, device, args, cache_interval=args.draft_interval, warmed_up=plan == "fast"
    )
    after = compile_counters()
    row.recompiles = after["unique_graphs"] - before["unique_graphs"]
    gap = mean_gap(clips, best)
    row.note = f"mean |frames - best| {gap:.2f} of 255" if gap is not None else "no clips"
    return row


def mean_gap(clips: Clips, reference: Clips) -> float | None:
    """Mean |frames - reference| of 255 over the clips of the same index; None if none."""
    both = sorted(clips.keys() & reference.keys())
    if not both:
        return None
    gaps = [np.abs(clips[i].astype(int) - reference[i].astype(int)).mean() for i in both]
    return round(float(statistics.mean(gaps)), 4)


@dataclass(frozen=True)
class Agreement:
    """How closely the fast plan's compiled UNet and VAE decoder compute the eager functions."""

    unet_relative_error: float
    vae_relative_error: float
    # max |fast - reference| of one weight: the two sides must start from the same weights.
    weight_gap: float
    # Graphs compiled by the check itself (it must run the graphs the clips ran: 0).
    graphs_compiled: int
    # "unet fast", "unet fp16 eager", "vae fast", "vae fp16 eager" against float32 eager.
    fp32_errors: dict[str, float]
    seed: int


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


def fast_plan_agreement(
    fast: SVDEngine, loader: CopyLoader, device: str, args: argparse.Namespace
) -> Agreement:
    """One UNet call and one VAE decode of the fast plan against the fp16 eager modules with the
    same weights and inputs: ||fast - ref|| / ||ref|| each; and both against float32 eager (the
    higher-precision reference), on random inputs drawn fresh for each run."""
    pipe = fast.pipeline()
    cache = fast.feature_cache()
    assert pipe is not None and cache is not None
    fast_unet, fast_vae = pipe.unet, pipe.vae
    ref_dtype = torch.float16 if device.startswith("cuda") else torch.float32
    reference = loader(MODEL, ref_dtype)
    reference.unet.to(device)
    reference.vae.to(device)
    width, height = target_size(16, 9, args.resolution)
    frames = int(reference.unet.config.num_frames)
    seed = secrets.randbits(31)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, frames, 8, height // 8, width // 8, generator=generator)
    embeddings = torch.randn(2, 1, reference.unet.config.cross_attention_dim, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    timestep = torch.tensor(1.0, device=device)
    chunk = min(frames, args.fast_decode_chunk)  # the fast plan's full decode chunk
    latents = torch.randn(chunk, 4, height // 8, width // 8, generator=generator)

    def unet_call(unet: Any) -> torch.Tensor:
        # The pipeline's own call, so the compiled UNet's guards hold.
        dtype = unet.dtype
        with torch.no_grad():
            out = unet(
                sample.to(device, dtype),
                timestep,
                encoder_hidden_states=embeddings.to(device, dtype),
                added_time_ids=time_ids.to(device, dtype),
                return_dict=False,
            )[0]
        return out.float()

    def decode(vae: Any) -> torch.Tensor:
        # As the engine decodes a chunk: the shape its warm-up compiled.
        with torch.no_grad():
            return vae.decode(latents.to(device, vae.dtype), num_frames=chunk).sample.float()

    weight_gap = (
        (fast_unet.conv_in.weight.float() - reference.unet.conv_in.weight.float()).abs().max()
    ).item()
    # The eager passes run each shape once: the fast plan's cudnn.benchmark would spend tens of
    # seconds timing convolution algorithms for them. Restored before the compiled calls, whose
    # guards saw it on.
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        unet_expected, vae_expected = unet_call(reference.unet), decode(reference.vae)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    del reference
    free_memory(device)
    unet_fp32 = vae_fp32 = None
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        precise = loader(MODEL, torch.float32)
        precise.unet.to(device)
        precise.vae.to(device)
        unet_fp32, vae_fp32 = unet_call(precise.unet), decode(precise.vae)
    except Exception as exc:
        # A float32 UNet beside the fast plan's needs ~30 GiB: a smaller card skips it (out of
        # memory, or cuBLAS failing to allocate); the rest of the run must not go with it.
        print(f"no float32 reference ({type(exc).__name__}): its errors are left out", flush=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = benchmark
        precise = None
        free_memory(device)
    before = compile_counters()["unique_graphs"]
    # Best quality's graph, the one every timed clip ran: between clips the cache is "off",
    # a mode (and a compiled graph) no clip uses.
    cache.start(1, 1)
    try:
        unet_got = unet_call(fast_unet)
    finally:
        cache.stop()
    vae_got = decode(fast_vae)
    agreement = Agreement(
        unet_relative_error=relative_error(unet_got, unet_expected),
        vae_relative_error=relative_error(vae_got, vae_expected),
        weight_gap=weight_gap,
        graphs_compiled=compile_counters()["unique_graphs"] - before,
        fp32_errors={}
        if unet_fp32 is None or vae_fp32 is None
        else {
            "unet fast": relative_error(unet_got, unet_fp32),
            "unet fp16 eager": relative_error(unet_expected, unet_fp32),
            "vae fast": relative_error(vae_got, vae_fp32),
            "vae fp16 eager": relative_error(vae_expected, vae_fp32),
        },
        seed=seed,
    )
    del unet_expected, vae_expected, unet_got, vae_got, unet_fp32, vae_fp32
    free_memory(device)
    return agreement


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --tiny, or --gpu --arch tiny --device cpu")
    # No TF32 here: the seed recipe is plain diffusers, torch's defaults; the fast plan turns
    # it on for itself (placement._tune_cuda).
    if args.log_recompiles:
        torch._logging.set_logs(recompiles=True)
    started = time.perf_counter()
    build_device = device if device.startswith("cuda") else "cpu"
    if args.arch == "xt":
        master = build_svd_xt(build_device)
    else:
        master = build_tiny_pipeline(num_frames=args.frames or 4)
    counts = parameter_counts(master)
    base = torch.float16 if device.startswith("cuda") else torch.float32
    master.to("cpu", dtype=base)
    free_memory(device)
    build_seconds = time.perf_counter() - started
    loader = CopyLoader(master)
    frames = loader.num_frames(MODEL)
    width, height = target_size(16, 9, args.resolution)
    print(f"built {args.arch} in {build_seconds:.1f} s: {counts} parameters; {frames} frames")

    planner: dict[str, Any] = {}
    if device.startswith("cuda"):
        free = torch.cuda.mem_get_info()[0] / GIB
        pick = choose_plan(
            device=device,
            free_gib=free,
            footprint=Footprint.svd_fp16(),
            workload=Workload(frames, width, height),
        )
        planner = {"free_vram_gib": round(free, 2), "auto_plan": pick.name}
        print(f"planner: {free:.1f} GiB free -> {pick.name}")

    result: dict[str, Any] = {
        "mode": "gpu",
        "arch": args.arch,
        "machine": machine(device),
        "args": vars(args),
        "parameters": counts,
        "build_seconds": round(build_seconds, 1),
        "planner": planner,
        "rows": [],
        "skipped": [],
        "errors": [],
    }
    rows: list[Row] = []
    timing: list[Row] = []  # the row being timed, once checkpointed

    def checkpoint(current: Row) -> None:
        """Write what is known so far, `current` (the plan being timed) included."""
        timing[:] = [current]
        pending = [] if any(r is current for r in rows) else [current]
        result["rows"] = [r.summary() for r in [*rows, *pending]]
        write(result, args.out)

    def failed(plan: str, exc: BaseException) -> None:
        traceback.print_exc()
        result["errors"].append({"plan": plan, "error": f"{type(exc).__name__}: {exc}"})

    write(result, args.out)  # the machine and the build, before anything can go wrong
    reference: dict[str, Clips] = {}  # the seed recipe's frames, to compare each plan's with
    for plan in args.plans:
        if time.perf_counter() - started > args.max_seconds:
            result["skipped"].append(plan)
            print(f"skipping {plan}: past --max-seconds")
            continue
        print(f"timing {plan} ...", flush=True)
        timing.clear()
        try:
            bench_one(
                plan, loader, device, args, (width, height), rows, checkpoint, failed, reference
            )
        except Exception as exc:
            # One plan's failure (a GPU quirk no CPU rehearsal shows) must not cost the others
            # their figures, nor its own so far (a compile time): the device time is spent.
            failed(plan, exc)
            for row in timing:
                if all(r is not row for r in rows):
                    row.note = f"FAILED: {type(exc).__name__} (see errors)"
                    rows.append(row)
        free_memory(device)  # after the except block: its traceback held the plan's tensors
        result["rows"] = [r.summary() for r in rows]
        write(result, args.out)
        print(table(rows), flush=True)
    return result


def bench_one(
    plan: str,
    loader: CopyLoader,
    device: str,
    args: argparse.Namespace,
    size: tuple[int, int],
    rows: list[Row],
    checkpoint: Callable[[Row], None],
    failed: Callable[[str, BaseException], None],
    reference: dict[str, Clips],
) -> None:
    """Add one plan's rows to `rows` as they are done (a later step's failure keeps them): the
    seed recipe's, or a plan's (with its agreement check under the fast plan, whose failure is
    reported to `failed` and the draft still timed) and its draft's."""
    if plan == SEED_RECIPE:
        seed_row, reference[SEED_RECIPE] = bench_seed_recipe(loader, device, size, args)
        rows.append(seed_row)
        return
    row, engine, best = bench_plan(plan, loader, device, args, checkpoint)
    if SEED_RECIPE in reference:
        row.seed_recipe_gap = mean_gap(best, reference[SEED_RECIPE])
    rows.append(row)
    try:
        if plan == "fast":
            checkpoint(row)
            try:
                agreement = fast_plan_agreement(engine, loader, device, args)
            except Exception as exc:
                failed(f"{plan} agreement check", exc)
                row.note += f" the agreement check failed ({type(exc).__name__}: {exc})!"
            else:
                row.unet_relative_error = agreement.unet_relative_error
                row.vae_relative_error = agreement.vae_relative_error
                row.fp32_errors = agreement.fp32_errors
                row.check_seed = agreement.seed
                if agreement.weight_gap > 1e-2:
                    row.note += f" weights differ from the reference by {agreement.weight_gap:g}!"
                if agreement.graphs_compiled:
                    row.note += f" the check compiled {agreement.graphs_compiled} graphs!"
            checkpoint(row)
        if args.draft_interval > 1 and plan in ("fast", "full"):
            # On the same engine: a compiled plan's draft graphs were warmed up with it.
            rows.append(bench_draft(plan, engine, best, device, args))
    finally:
        engine.close()
        del engine
        free_memory(device)


# --- the CPU overhead benchmark ----------------------------------------------------------------


def run_tiny(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import StableVideoDiffusionPipeline

    from generation.tiny import save_tiny_pipeline

    frames = args.frames or 4
    width, height = target_size(16, 9, args.resolution)
    image = picture(width, height, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        path = save_tiny_pipeline(Path(folder) / "tiny", num_frames=frames)
        bare: Any = StableVideoDiffusionPipeline.from_pretrained(path)
        bare.set_progress_bar_config(disable=True)
        engine = SVDEngine([str(path)], device="cpu", resolution=args.resolution)
        engine.load()
        bare_row = Row(SEED_RECIPE, note="the bare pipeline call, PIL frames")
        engine_row = Row("engine (cpu plan)", note="SVDEngine.run, uint8 frames")
        identical = True
        for index in range(args.warmup + args.repeats):
            seed = 100 + index
            timings: dict[str, float] = {}
            cpu: dict[str, float] = {}
            outputs: dict[str, np.ndarray] = {}

            def call_bare(seed: int = seed) -> np.ndarray:
                out = bare(
                    image,
                    height=height,
                    width=width,
                    num_frames=frames,
                    num_inference_steps=args.steps,
                    decode_chunk_size=8,
                    generator=torch.Generator().manual_seed(seed),
                ).frames[0]
                return np.stack([np.asarray(frame) for frame in out])

            def call_engine(seed: int = seed) -> np.ndarray:
                options = AnimateOptions(num_inference_steps=args.steps, seed=seed)
                return engine.run(image, options, lambda _p: None, lambda: False).frames

            # Alternate the order so that neither always runs on the warmer (or busier) machine.
            calls = [("bare", call_bare), ("engine", call_engine)]
            for name, call in calls if index % 2 == 0 else calls[::-1]:
                begun, begun_cpu = time.perf_counter(), time.process_time()
                outputs[name] = call()
                timings[name] = time.perf_counter() - begun
                cpu[name] = time.process_time() - begun_cpu
            identical &= bool(np.array_equal(outputs["bare"], outputs["engine"]))
            if index >= args.warmup:
                bare_row.clip_seconds.append(timings["bare"])
                engine_row.clip_seconds.append(timings["engine"])
                bare_row.cpu_seconds.append(cpu["bare"])
                engine_row.cpu_seconds.append(cpu["engine"])
        engine.close()
    overhead = engine_row.median - bare_row.median
    # Each iteration's pair ran back to back under the same load: their difference is steadier.
    paired = statistics.median(
        e - b for e, b in zip(engine_row.clip_seconds, bare_row.clip_seconds, strict=True)
    )
    cpu_overhead = statistics.median(engine_row.cpu_seconds) - statistics.median(
        bare_row.cpu_seconds
    )
    rows = [bare_row, engine_row]
    print(table(rows))
    print(
        f"engine overhead: {overhead:+.3f} s wall ({overhead / bare_row.median:+.1%}), "
        f"{paired:+.3f} s paired, {cpu_overhead:+.3f} s CPU per clip; "
        f"frames identical to the bare call's: {identical}"
    )
    return {
        "mode": "tiny",
        "machine": machine("cpu"),
        "args": vars(args),
        "clip": {"frames": frames, "width": width, "height": height, "steps": args.steps},
        "rows": [r.summary() for r in rows],
        "overhead_seconds": round(overhead, 4),
        "overhead_fraction": round(overhead / bare_row.median, 4),
        "cpu_overhead_seconds": round(cpu_overhead, 4),
        "paired_overhead_seconds": round(paired, 4),
        "torch_threads": torch.get_num_threads(),
        "frames_identical": identical,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# --- reporting --------------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def table(rows: list[Row]) -> str:
    baseline = next((r.median for r in rows if r.name == SEED_RECIPE), None)
    lines = [
        "| plan | s/clip (median) | vs seed | UNet s/step | decode s | peak VRAM GiB "
        "| load s | compile s | recompiles | UNet rel. err | VAE rel. err | vs seed frames "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | int | None, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    for row in rows:
        data = row.summary()
        speedup = baseline / row.median if baseline and row.clip_seconds else None
        lines.append(
            f"| {row.name} | {fmt(row.median)} | {fmt(speedup, '.2f')}x "
            f"| {fmt(data['median_unet_step_seconds'], '.3f')} "
            f"| {fmt(data['median_decode_seconds'])} | {fmt(row.peak_vram_gib)} "
            f"| {fmt(row.load_seconds, '.1f')} | {fmt(row.compile_seconds, '.1f')} "
            f"| {fmt(row.recompiles, 'd')} | {fmt(row.unet_relative_error, '.2e')} "
            f"| {fmt(row.vae_relative_error, '.2e')} | {fmt(row.seed_recipe_gap)} "
            f"| {row.note} |"
        )
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all: SIGTERM's exit may land in the middle of a write.
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(partial, out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", action="store_true", help="CPU: engine overhead, tiny model")
    mode.add_argument("--gpu", action="store_true", help="CUDA: full-size SVD-XT, every plan")
    parser.add_argument("--device", default="cuda", help="--gpu only (cpu for a smoke test)")
    parser.add_argument("--arch", choices=("xt", "tiny"), default="xt", help="--gpu only")
    parser.add_argument(
        "--plans",
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        default=[SEED_RECIPE, *GPU_PLANS],
        help=f"comma-separated, from {SEED_RECIPE},{','.join(GPU_PLANS)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--full-repeats", action="store_true", help="repeat the slow plans too")
    parser.add_argument("--steps", type=int, default=None, help="default 25 (--gpu), 4 (--tiny)")
    parser.add_argument("--frames", type=int, default=None, help="tiny model's frames (4)")
    parser.add_argument("--resolution", type=int, default=None, help="1024 (--gpu), 256 (--tiny)")
    parser.add_argument("--fast-dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--compile-mode", default=PlanSettings().compile_mode)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--fast-decode-chunk", type=int, default=PlanSettings().fast_decode_chunk)
    parser.add_argument(
        "--compile-cache", type=Path, default=None, help="inductor cache folder (default: torch's)"
    )
    parser.add_argument(
        "--draft-interval",
        type=int,
        default=0,
        help="also time draft quality at this cache interval (3 is /animate's) on fast and full",
    )
    parser.add_argument(
        "--warm",
        choices=("both", "landscape"),
        default="both",
        help="the fast plan's start-up compile: both orientations (as the bot), or landscape "
        "only (half the compile time; the timed clips are landscape)",
    )
    parser.add_argument("--max-seconds", type=float, default=540.0, help="start no plan after")
    parser.add_argument("--log-recompiles", action="store_true", help="torch's recompile log")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    unknown = set(args.plans) - {SEED_RECIPE, *GPU_PLANS}
    if unknown:
        parser.error(f"unknown plans: {', '.join(sorted(unknown))}")
    if args.steps is None:
        args.steps = 4 if args.tiny else 25
    if args.resolution is None:
        args.resolution = 256 if args.tiny or args.arch == "tiny" else 1024
    return args


def quiet_libraries() -> None:
    """diffusers' and transformers' progress bars and notices (e.g. about casting the random
    model to fp16) are noise in a benchmark's output."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()


# The most relative error the fast plan may show against fp16 eager: fp16 kernels that add in
# another order land near 1e-3; bf16's 8-bit mantissa near 1e-2.
MAX_RELATIVE_ERROR = {"float16": 1e-2, "bfloat16": 5e-2}


def failed_rows(result: dict[str, Any], fast_dtype: str) -> list[str]:
    """Rows whose compiled modules compute another function (NaN never passes), recompiled, or
    ran another plan than their name's."""
    bound = MAX_RELATIVE_ERROR[fast_dtype]
    return [
        row["name"]
        for row in result["rows"]
        if any(
            row.get(key) is not None and not row[key] < bound
            for key in ("unet_relative_error", "vae_relative_error")
        )
        or (row["recompiles"] or 0) > 0
        or row.get("fell_back_to") is not None
        or not all(math.isfinite(error) for error in (row.get("fp32_errors") or {}).values())
    ]


def stop_on_sigterm() -> None:
    """`timeout` ends a run that outlives its device time with SIGTERM: say so and leave, the
    results so far already written (each plan writes them as its figures come in)."""

    def stop(_signum: int, _frame: Any) -> None:
        print("stopped by SIGTERM (time limit): the results so far are in --out", flush=True)
        # Where a compile cut short spent its time, for the next run's plan.
        with contextlib.suppress(Exception):
            print(torch._dynamo.utils.compile_times(repr="str"), flush=True)
        os._exit(3)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    # The engine's own lines (plan, fused layers, compile and warm-up time per shape) belong in
    # the benchmark's log.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.tiny:
        result = run_tiny(args)
        write(result, args.out)
        return 0
    stop_on_sigterm()
    result = run_gpu(args)
    write(result, args.out)
    failures = failed_rows(result, args.fast_dtype)
    if failures:
        bound = MAX_RELATIVE_ERROR[args.fast_dtype]
        print(
            f"FAILED: {', '.join(failures)} (relative error >= {bound:g} or NaN, recompiles, "
            "or fell back to another plan)"
        )
        return 1
    if result["errors"]:
        print(f"FAILED: {', '.join(e['plan'] for e in result['errors'])} raised (see above)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

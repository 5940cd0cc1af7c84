"""`SVDEngine`: Stable Video Diffusion through diffusers, within the memory the host has.

One engine serves one process's GPU (or CPU). It loads each configured model with
`StableVideoDiffusionPipeline.from_pretrained`, places it under the memory plan that fits
(plans.py), and runs one clip at a time from the worker's thread:

1. the denoising loop runs inside the pipeline (`output_type="latent"`); `callback_on_step_end`
   reports every step and raises `Cancelled` when asked, so a cancel lands within one step, and
   for draft quality tells the feature cache (feature_cache.py) how the next step runs;
2. the engine decodes the latents itself, chunk by chunk, so the decode phase reports progress
   too and each chunk's frames leave the GPU at once;
3. on CUDA out-of-memory it frees the cache, reloads the model under the next smaller plan and
   starts again with the same seed; the smaller plan stays for later clips.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from generation.errors import (
    Cancelled,
    GenerationError,
    GenerationFailed,
    GPUUnusable,
    InvalidOptions,
)
from generation.feature_cache import FeatureCache
from generation.images import target_size
from generation.models import (
    TORCH_DTYPES,
    LoadedModel,
    ModelPool,
    Pipeline,
    PipelineLoader,
    PretrainedLoader,
    footprint_of,
    free_ram_gib,
    release_memory,
)
from generation.motion import static_hint
from generation.options import AnimateOptions, random_seed
from generation.placement import compile_cache_counts, place
from generation.plans import (
    GIB,
    Footprint,
    MemoryMode,
    Plan,
    PlanSettings,
    Workload,
    base_dtype,
    choose_plan,
    next_plan,
    resident_capacity,
)
from generation.results import GenerationResult, OnStep, Progress, ShouldCancel

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cuda", "cpu"]
# How the engine calls the pipeline; tests wrap it to inject a failure.
PipelineCall = Callable[[Pipeline, dict[str, Any]], Any]

# Warm-up runs a draft of three steps at cache interval 2 (whole, on the kept feature, whole):
# both ways the compiled UNet runs, and the third call proves the first compile is reused.
_WARM_UP_STEPS = 3
_WARM_UP_CACHE_INTERVAL = 2

_OOM_MESSAGE = (
    "The GPU ran out of memory while making this clip, even with the engine's most frugal "
    "settings. Please try again later."
)
_ERROR_MESSAGE = "Something went wrong while making the clip. Please try again later."
_LOAD_MESSAGE = "The video model could not be loaded. Please try again later."


def _call_pipeline(pipe: Pipeline, kwargs: dict[str, Any]) -> Any:
    return pipe(**kwargs)


def _ignore_progress(progress: Progress) -> None:
    return None


def _never_cancel() -> bool:
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's allocator failing, however it surfaced (some kernels raise a plain RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def gpu_unusable(device: str) -> bool:
    """Whether the CUDA context is broken: after such an error every call on it fails, a
    trivial one included, while a clip's own bad luck leaves the next one working."""
    if not device.startswith("cuda"):
        return False
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() != 2.0
    except Exception:
        return True


# The resolution at which a clip made on the CPU takes minutes rather than an hour.
CPU_FRIENDLY_RESOLUTION = 512


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationFailed(
            "DEVICE=cuda but PyTorch sees no CUDA GPU here; install a CUDA build of torch or "
            "set DEVICE=cpu.",
            reason="config",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    return device


def clip_sizes(resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (width, height) of landscape and portrait clips at `resolution`."""
    return target_size(16, 9, resolution), target_size(9, 16, resolution)


@dataclass(frozen=True)
class WarmUp:
    """What the fast plan compiles for at load, when its clips are known in advance (the
    command line's one clip): their sizes (width, height), frames and decode chunk. A clip of
    another shape compiles again, on its own time."""

    sizes: tuple[tuple[int, int], ...]
    num_frames: int | None = None
    decode_chunk_size: int | None = None


@dataclass(frozen=True)
class _Attempt:
    frames: np.ndarray
    plan: Plan


class SVDEngine:
    """Implements `generation.results.Engine` with diffusers' `StableVideoDiffusionPipeline`."""

    def __init__(
        self,
        models: Sequence[str],
        *,
        device: DeviceChoice | str = "auto",
        memory_mode: MemoryMode = "auto",
        resolution: int = 1024,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        vram_budget_gib: float | None = None,
        max_resident: int | None = None,
        plan_settings: PlanSettings | None = None,
        loader: PipelineLoader | None = None,
        pipeline_call: PipelineCall | None = None,
        warm_portrait: bool = True,
        warm_up: WarmUp | None = None,
    ) -> None:
        """
        models: hub ids or folders; the first is the default.
        memory_mode: "auto" lets the planner pick from free VRAM; a plan name forces it.
        resolution: the clips' long side; the fast plan compiles for its two orientations.
        vram_budget_gib: plan as if this much VRAM were free (tests, or to share a GPU); on a
            CPU it simulates a GPU's plans, whose offloading then has no effect.
        max_resident: models kept loaded at once; None works it out from free memory.
        loader: makes a pipeline for a model name (default: `from_pretrained`).
        pipeline_call: calls the pipeline; a seam for tests.
        warm_portrait: the fast plan compiles portrait clips at start too; False leaves that to
            the first portrait clip (the GPU benchmark, whose device time is short).
        warm_up: compile for exactly these clips instead (overrides `warm_portrait`).
        """
        names = [m for m in (str(m).strip() for m in models) if m]
        if not names:
            raise ValueError("at least one model is needed")
        self.models: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.device = resolve_device(device)
        if device == "auto" and self.device == "cpu" and resolution > CPU_FRIENDLY_RESOLUTION:
            # Most often a host's mistake (no --gpus, a CPU-only torch, an old driver), which
            # the clips' time limit would otherwise be the first to show.
            log.warning(
                "no CUDA GPU is visible, so clips are made on the CPU: many minutes each at "
                "resolution %d. Check the driver (and the container's GPU access) or set "
                "RESOLUTION=%d to try it this way",
                resolution,
                CPU_FRIENDLY_RESOLUTION,
            )
        self.memory_mode: MemoryMode = memory_mode
        self.resolution = resolution
        self.plan_settings = plan_settings or PlanSettings()
        self._vram_budget_gib = vram_budget_gib
        self._max_resident = max_resident
        self._loader: PipelineLoader = loader or PretrainedLoader(
            cache_dir=cache_dir, local_files_only=local_files_only
        )
        self._pipeline_call = pipeline_call or _call_pipeline
        self._warm = warm_up or WarmUp(clip_sizes(resolution)[: 2 if warm_portrait else 1])
        self._warm_sizes = self._warm.sizes
        self._lock = threading.RLock()
        self._pool = ModelPool(self._load_model, capacity=1, release=self._release)
        self._sized = False
        self._frames: dict[str, int] = {}
        # A model that ran out of memory keeps its smaller plan for later clips.
        self._plans: dict[str, Plan] = {}

    # --- the Engine protocol -------------------------------------------------------------

    def load(self) -> None:
        """Load the default model and, under the fast plan, compile and warm it up; then learn
        how many frames the other models make (from their configs), so that waiting times for
        them are right without loading them."""
        with self._lock:
            self._acquire(self.models[0])
        read = getattr(self._loader, "num_frames", None)
        for name in self.models[1:]:
            if name in self._frames or not callable(read):
                continue
            try:
                count = read(name)
            except Exception as exc:  # a missing config only costs an estimate
                log.info("could not read how many frames %s makes: %s", name, exc)
                continue
            if count is not None:
                self._frames[name] = count

    def known_frames(self, model: str | None) -> int | None:
        """The frame count if known without waiting (never takes the lock); else None."""
        try:
            name = self._model_name(model)
        except InvalidOptions:
            return None
        return self._frames.get(name)

    def frames_for(self, model: str | None) -> int:
        name = self._model_name(model)
        # The event loop asks this while a clip may hold the lock for its whole run: answer a
        # known model without waiting for it.
        known = self._frames.get(name)
        if known is not None:
            return known
        with self._lock:
            loaded = self._pool.peek(name)
            if loaded is not None:
                return loaded.num_frames
            if name not in self._frames:
                read = getattr(self._loader, "num_frames", None)
                count = read(name) if callable(read) else None
                if count is None:
                    count = self._acquire(name)[0].num_frames
                self._frames[name] = count
            return self._frames[name]

    def run(
        self,
        image: Image.Image,
        options: AnimateOptions,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> GenerationResult:
        """Generate from an image already fitted to the clip's size (multiples of 8)."""
        width, height = image.size
        if width % 8 or height % 8:
            raise ValueError(f"the image must be fitted first; {width}x{height} is not /8")
        name = self._model_name(options.model)
        seed = options.seed if options.seed is not None else random_seed()
        if should_cancel():
            raise Cancelled()
        with self._lock:
            if name not in self._pool:
                on_step(Progress("loading"))
            loaded, load_seconds = self._acquire(name)
            started = time.perf_counter()
            first_plan = loaded.plan.name
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            while True:
                try:
                    frames = self._generate(loaded, rgb, options, seed, on_step, should_cancel)
                    break
                except GenerationError:
                    raise
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        log.exception("generation failed on %s, plan %s", name, loaded.plan.name)
                        if gpu_unusable(self.device):
                            raise GPUUnusable(f"{type(exc).__name__}: {exc}") from exc
                        raise GenerationFailed(_ERROR_MESSAGE) from exc
                    failed_plan = loaded.plan
                    log.warning("out of memory on %s under plan %s", name, failed_plan.name)
                # Outside the except block, so the traceback's frames (and their tensors) are gone.
                if next_plan(failed_plan, self.plan_settings) is None:
                    release_memory(self.device)
                    raise GenerationFailed(_OOM_MESSAGE, reason="oom")
                on_step(Progress("loading"))
                reload_started = time.perf_counter()
                loaded = self._step_down(name, failed_plan)
                load_seconds += time.perf_counter() - reload_started
            seconds = time.perf_counter() - started
        hint = static_hint(frames)
        return GenerationResult(
            frames=frames,
            seed=seed,
            model=name,
            plan=loaded.plan.name,
            seconds=seconds,
            fallback_from=first_plan if loaded.plan.name != first_plan else None,
            load_seconds=load_seconds,
            hints=(hint,) if hint else (),
        )

    # --- what else callers may ask ----------------------------------------------------------

    def plan_for(self, model: str | None = None) -> str | None:
        """The plan a loaded model runs under, or None when it is not loaded."""
        loaded = self._pool.peek(self._model_name(model))
        return loaded.plan.name if loaded else None

    def pipeline(self, model: str | None = None) -> Pipeline | None:
        """The loaded pipeline of a model, as placed (for benchmarks and diagnostics)."""
        loaded = self._pool.peek(self._model_name(model))
        return loaded.pipe if loaded else None

    def feature_cache(self, model: str | None = None) -> FeatureCache | None:
        """The loaded model's feature cache (for benchmarks: its mode picks the compiled graph)."""
        loaded = self._pool.peek(self._model_name(model))
        return loaded.feature_cache if loaded else None

    def loaded_models(self) -> list[str]:
        """Models loaded now, least recently used first."""
        return self._pool.names

    def compile_seconds(self, model: str | None = None) -> float:
        """Seconds the fast plan's warm-up took for a loaded model (0 for other plans)."""
        loaded = self._pool.peek(self._model_name(model))
        return loaded.compile_seconds if loaded else 0.0

    def compile_cache_hits(self, model: str | None = None) -> tuple[int, int]:
        """(graphs loaded from the compile cache, graphs compiled) in a loaded model's warm-up."""
        loaded = self._pool.peek(self._model_name(model))
        return (loaded.cache_hits, loaded.cache_misses) if loaded else (0, 0)

    def close(self) -> None:
        """Unload every model and give the memory back."""
        with self._lock:
            self._pool.clear()

    # --- loading and placing ------------------------------------------------------------------

    def _model_name(self, model: str | None) -> str:
        if model is None:
            return self.models[0]
        if model not in self.models:
            raise InvalidOptions(
                "model", f"`model` must be one of the host's models: {', '.join(self.models)}."
            )
        return model

    def _get(self, name: str) -> tuple[LoadedModel, float]:
        try:
            return self._pool.get(name)
        except GenerationError:
            raise
        except Exception as exc:
            # The host needs the cause (missing files, offline, gated...): it is chained and
            # logged; the member sees a plain sentence.
            log.exception("could not load model %s", name)
            raise GenerationFailed(_LOAD_MESSAGE, reason="load") from exc

    def _acquire(self, name: str) -> tuple[LoadedModel, float]:
        loaded, seconds = self._acquire_sized(name)
        self._frames[name] = loaded.num_frames
        return loaded, seconds

    def _acquire_sized(self, name: str) -> tuple[LoadedModel, float]:
        if self._sized:
            return self._get(name)
        # The first load also decides how many models may stay loaded, from the memory that
        # was free before any of them was.
        before_vram = self._free_vram_gib()
        before_ram = free_ram_gib()
        loaded, seconds = self._get(name)
        if self._max_resident is not None:
            capacity = self._max_resident
        else:
            keeps_weights_on_gpu = loaded.plan.placement == "device" and before_vram is not None
            capacity = resident_capacity(
                free_gib=before_vram if keeps_weights_on_gpu and before_vram else before_ram,
                plan=loaded.plan,
                footprint=loaded.footprint,
                workload=self._workload(loaded.num_frames),
                models=len(self.models),
            )
        self._pool.capacity = max(1, capacity)
        self._sized = True
        log.info("up to %d of %d models stay loaded", self._pool.capacity, len(self.models))
        return loaded, seconds

    def _free_vram_gib(self) -> float | None:
        """Free VRAM to plan with: the override less what resident models hold, or measured."""
        if self._vram_budget_gib is not None:
            held = sum(
                m.footprint.total_gib for m in self._pool.loaded() if m.plan.placement == "device"
            )
            return max(0.0, self._vram_budget_gib - held)
        if self.device.startswith("cuda"):
            free, _total = torch.cuda.mem_get_info(torch.device(self.device))
            return free / GIB
        return None

    def _workload(self, frames: int) -> Workload:
        width, height = clip_sizes(self.resolution)[0]
        return Workload(frames=frames, width=width, height=height)

    def _load_model(self, name: str, plan: Plan | None = None) -> LoadedModel:
        """Load `name` under `plan` (else the one remembered or chosen for it). A plan that
        cannot be set up here (out of memory placing it, or, for the fast plan, a compile that
        fails: no C compiler for Triton, an inductor bug) gives way to the next one down, so the
        bot serves clips rather than failing each one."""
        while True:
            free_vram = self._free_vram_gib()
            started = time.perf_counter()
            pipe: Pipeline | None = None
            try:
                pipe = self._loader(name, TORCH_DTYPES[base_dtype(self.device)])
                pipe.set_progress_bar_config(disable=True)
                num_frames = int(pipe.unet.config.num_frames)
                footprint = footprint_of(pipe)
                if plan is None:
                    plan = self._plans.get(name) or choose_plan(
                        device=self.device,
                        free_gib=free_vram,
                        footprint=footprint,
                        workload=self._workload(num_frames),
                        memory_mode=self.memory_mode,
                        settings=self.plan_settings,
                    )
                return self._set_up(name, pipe, plan, footprint, num_frames, started)
            except Exception as exc:
                # A kernel of the compile's warm-up (or of placing) that broke the context: no
                # smaller plan can run on it either.
                if not is_out_of_memory(exc) and gpu_unusable(self.device):
                    raise GPUUnusable(f"{type(exc).__name__}: {exc}") from exc
                fallback = None if plan is None else self._fallback(name, plan, exc)
                if fallback is None:
                    raise
            # Outside the except block, so the traceback's frames let go of the pipeline; a
            # fresh one is the only reliable way off a half-placed or half-compiled one.
            if pipe is not None:
                pipe.remove_all_hooks()
            del pipe
            release_memory(self.device)
            plan = self._plans[name] = fallback

    def _set_up(
        self,
        name: str,
        pipe: Pipeline,
        plan: Plan,
        footprint: Footprint,
        num_frames: int,
        started: float,
    ) -> LoadedModel:
        place(pipe, plan)
        cache = FeatureCache(
            pipe.unet,
            always_keep=plan.compile,
            keep_on="cpu" if plan.on_cuda and plan.placement != "device" else None,
        )
        loaded = LoadedModel(name, pipe, plan, footprint, num_frames, cache)
        self._frames[name] = num_frames
        log.info(
            "loaded %s in %.1f s under plan %s (%d frames, %.2f GiB of weights)",
            name,
            time.perf_counter() - started,
            plan.name,
            num_frames,
            footprint.total_gib,
        )
        if plan.compile:
            self._warm_up(loaded)
        return loaded

    def _fallback(self, name: str, plan: Plan, exc: Exception) -> Plan | None:
        """The plan to set `name` up under after `plan` failed with `exc`; None: give up."""
        out_of_memory = is_out_of_memory(exc)
        if not (out_of_memory or plan.compile):
            return None
        fallback = next_plan(plan, self.plan_settings)
        if fallback is None:
            return None
        if out_of_memory:
            log.warning(
                "out of memory setting up %s under plan %s; trying plan %s",
                name,
                plan.name,
                fallback.name,
            )
        else:
            log.error(
                "compiling %s for plan %s failed; it runs uncompiled under plan %s instead "
                "(slower). torch.compile needs a C compiler and the Python headers on the host "
                "(gcc and python3-dev on Debian/Ubuntu); MEMORY_MODE=full skips compiling.",
                name,
                plan.name,
                fallback.name,
                exc_info=exc,
            )
        return fallback

    def _warm_up(self, loaded: LoadedModel) -> None:
        """Compile for both orientations now, so no user waits for it (and nothing recompiles)."""
        started = time.perf_counter()
        cached_before = compile_cache_counts()
        for width, height in self._warm_sizes:
            image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
            # Whole steps keep the deep feature under this plan, draft or not, so a draft
            # compiles every graph best quality needs too.
            options = AnimateOptions(
                num_inference_steps=_WARM_UP_STEPS,
                seed=0,
                cache_interval=_WARM_UP_CACHE_INTERVAL,
                num_frames=self._warm.num_frames,
                decode_chunk_size=self._warm.decode_chunk_size,
            )
            self._generate(loaded, image, options, 0, _ignore_progress, _never_cancel)
            # Per shape: a first start that takes long says how far it got.
            log.info(
                "warmed up %s for %dx%d after %.1f s",
                loaded.name,
                width,
                height,
                time.perf_counter() - started,
            )
        loaded.compile_seconds = time.perf_counter() - started
        loaded.warm_shapes = frozenset(self._warm_sizes)
        cached = compile_cache_counts()
        loaded.cache_hits = cached["hits"] - cached_before["hits"]
        loaded.cache_misses = cached["misses"] - cached_before["misses"]
        log.info(
            "compiled and warmed up %s in %.1f s (%d of %d kernel graphs from the compile cache)",
            loaded.name,
            loaded.compile_seconds,
            loaded.cache_hits,
            loaded.cache_hits + loaded.cache_misses,
        )

    def _step_down(self, name: str, failed: Plan) -> LoadedModel:
        """Reload `name` under the next plan smaller than `failed` (and further down, should
        even that not fit: `_load_model`). A clean pipeline is the only reliable way off a
        compiled or offloaded one, and an out-of-memory error is rare."""
        self._pool.evict(name)
        release_memory(self.device)
        plan = next_plan(failed, self.plan_settings)
        if plan is None:
            raise GenerationFailed(_OOM_MESSAGE, reason="oom")
        log.warning("stepping %s down from plan %s to %s", name, failed.name, plan.name)
        try:
            fresh = self._load_model(name, plan)
        except GPUUnusable:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):  # even the last plan did not fit
                raise GenerationFailed(_OOM_MESSAGE, reason="oom") from exc
            log.exception("could not reload model %s", name)
            raise GenerationFailed(_LOAD_MESSAGE, reason="load") from exc
        self._plans[name] = fresh.plan
        self._pool.replace(fresh)
        return fresh

    def _release(self, loaded: LoadedModel) -> None:
        loaded.pipe.remove_all_hooks()
        loaded.pipe = None  # drops the weights even while a caller still holds `loaded`
        release_memory(self.device)

    # --- one clip -------------------------------------------------------------------------------

    def _generate(
        self,
        loaded: LoadedModel,
        image: Image.Image,
        options: AnimateOptions,
        seed: int,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> np.ndarray:
        pipe = loaded.pipe
        plan = loaded.plan
        steps = options.num_inference_steps
        num_frames = options.num_frames or loaded.num_frames
        chunk = min(options.decode_chunk_size or plan.decode_chunk_size, plan.decode_chunk_size)
        chunk = min(chunk, loaded.decode_chunk_cap or chunk)
        # The compiled plan decodes in the same chunks as the others (25 frames: 8 + 8 + 8 + 1,
        # a second decoder graph), not in chunks of one shape: SVD's decoder mixes the frames
        # within a chunk (its temporal layers), so other chunks would make another clip.
        width, height = image.size
        cache = loaded.feature_cache

        def on_step_end(
            _pipe: Pipeline, i: int, _t: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            on_step(Progress("denoising", i + 1, steps))
            if should_cancel():
                raise Cancelled()
            cache.step_done(i)
            return tensors

        # A CPU generator gives the same noise on every device and plan, so a retry after a
        # step-down (or a re-roll on another host) starts from the same point.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        kwargs: dict[str, Any] = {
            "image": image,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "num_inference_steps": steps,
            "fps": options.fps,
            "motion_bucket_id": options.motion_bucket_id,
            "noise_aug_strength": options.noise_aug_strength,
            "decode_chunk_size": chunk,
            "generator": generator,
            "output_type": "latent",
            "callback_on_step_end": on_step_end,
        }
        cache.start(options.cache_interval, steps)
        try:
            latents = self._pipeline_call(pipe, kwargs).frames
            cache.stop()  # before the decode, which needs the memory
            return self._decode_fitting(loaded, latents, chunk, on_step, should_cancel)
        finally:
            cache.stop()
            # After an exception, offload hooks may have left a model on the GPU; after the
            # decode, the VAE is there. Either way, put everything back where offloading wants it.
            pipe.maybe_free_model_hooks()

    def _decode_fitting(
        self,
        loaded: LoadedModel,
        latents: torch.Tensor,
        chunk: int,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> np.ndarray:
        """Decode, in smaller chunks after running out of memory: the denoised latents are the
        clip's costly part, and a step-down would throw them away and make them again. The
        smaller chunk stays for this model's next clips. A compiled decoder is left to the step
        down instead: a new chunk shape would recompile it (minutes)."""
        chunk = min(chunk, latents.shape[1])  # (1, frames, …): a chunk is at most the clip
        while True:
            try:
                return self._decode(loaded.pipe, latents, chunk, on_step, should_cancel)
            except Exception as exc:
                if not is_out_of_memory(exc) or chunk == 1 or loaded.plan.compile:
                    raise
            # Outside the except block, so the traceback's frames (and their tensors) are gone.
            chunk = max(1, chunk // 2)
            loaded.decode_chunk_cap = chunk
            log.warning(
                "out of memory decoding %s under plan %s; decoding %d frame(s) at a time",
                loaded.name,
                loaded.plan.name,
                chunk,
            )
            release_memory(self.device)

    @torch.no_grad()
    def _decode(
        self,
        pipe: Pipeline,
        latents: torch.Tensor,
        chunk: int,
        on_step: OnStep,
        should_cancel: ShouldCancel,
    ) -> np.ndarray:
        """Latents (1, F, C, h, w) to uint8 frames (F, H, W, 3), `chunk` frames at a time."""
        vae = pipe.vae
        # Written as diffusers writes it (decode_latents and postprocess), so that the frames are
        # bit for bit the pipeline's own.
        flat = 1 / vae.config.scaling_factor * latents.flatten(0, 1)
        total = math.ceil(flat.shape[0] / chunk)
        on_step(Progress("decoding", 0, total))
        parts = []
        for index, start in enumerate(range(0, flat.shape[0], chunk)):
            if should_cancel():
                raise Cancelled()
            part = flat[start : start + chunk].to(vae.dtype)
            decoded = vae.decode(part, num_frames=part.shape[0]).sample
            pixels = ((decoded.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            parts.append(pixels.permute(0, 2, 3, 1).cpu())
            on_step(Progress("decoding", index + 1, total))
        return torch.cat(parts).numpy()

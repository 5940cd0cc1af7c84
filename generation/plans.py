"""Memory plans: how the SVD pipeline is placed on the device, and which one fits.

Pure functions over plain numbers, so the choices can be tested with given VRAM figures and no
GPU. The memory figures are the estimates in shared/notes/svd-facts.md for SVD-XT in fp16
(25 frames at 1024x576, guidance on, so the UNet sees a batch of 2); activations scale with
frames x pixels, weights are measured from the loaded pipeline. Plans, most room first:

- fast: everything on the GPU, fused projections, channels-last, torch.compile (issue 8).
- full: everything on the GPU, eager.
- offload: `enable_model_cpu_offload()`; one model on the GPU at a time.
- offload_chunked: offload + `unet.enable_forward_chunking()` + VAE decode 2 frames at a time.
- sequential: `enable_sequential_cpu_offload()`; one layer at a time, the last resort.
- cpu: no CUDA; everything on the CPU in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PlanName = Literal["fast", "full", "offload", "offload_chunked", "sequential", "cpu"]
MemoryMode = Literal["auto", "fast", "full", "offload", "offload_chunked", "sequential"]
Placement = Literal["device", "model_offload", "sequential_offload"]
DType = Literal["float16", "bfloat16", "float32"]

# The order the planner tries, and the order an out-of-memory error steps down through.
GPU_PLANS: tuple[PlanName, ...] = ("fast", "full", "offload", "offload_chunked", "sequential")
MEMORY_MODES: tuple[MemoryMode, ...] = (
    "auto",
    "fast",
    "full",
    "offload",
    "offload_chunked",
    "sequential",
)

GIB = 1024**3

# --- Figures for SVD-XT, fp16, 25 frames at 1024x576 (svd-facts.md; estimates, not measured).
_REF_FRAMES = 25
_REF_PIXELS = 1024 * 576
# UNet activations at the peak of one guided step: the offload peak (10.6 GiB) less the UNet's
# weights (2.84 GiB) ...
_UNET_ACTIVATIONS_GIB = 7.7
# ... and with `enable_forward_chunking()` (7.3 GiB peak less the same weights).
_UNET_ACTIVATIONS_CHUNKED_GIB = 4.5
# Draft quality keeps one deep UNet feature between steps (generation/feature_cache.py): the
# second-to-last up block's output, 2 x 25 frames x 640 channels x 72 x 128 in fp16. Any clip
# may be a draft, and the compiled plan keeps it on every step; plans that offload keep it in RAM.
_KEPT_FEATURE_GIB = 2 * 25 * 640 * 72 * 128 * 2 / 1024**3
# VAE decode activations per frame decoded at once (28 GiB for 25 frames; 9 at 8; 2.3 at 2).
_DECODE_GIB_PER_FRAME = 28.0 / 25
# The CUDA context, cuBLAS/cuDNN workspaces and allocator slack of our own process.
_RUNTIME_OVERHEAD_GIB = 0.5
# Room the fast plan needs beyond "full": autotuning workspaces and compiled kernels' buffers.
_COMPILE_HEADROOM_GIB = 2.0
# With `enable_sequential_cpu_offload()` only the layer running is on the GPU.
_SEQUENTIAL_WEIGHTS_GIB = 0.2
# Use at most this share of the free VRAM: fragmentation and estimates' error need the rest.
_SAFETY = 0.9

DEFAULT_DECODE_CHUNK = 8
CHUNKED_DECODE_CHUNK = 2


@dataclass(frozen=True)
class Footprint:
    """Weight sizes in GiB of one loaded pipeline, by component."""

    unet_gib: float
    vae_gib: float
    image_encoder_gib: float

    @property
    def total_gib(self) -> float:
        return self.unet_gib + self.vae_gib + self.image_encoder_gib

    @classmethod
    def svd_fp16(cls) -> Footprint:
        """SVD / SVD-XT in fp16 (the two share an architecture)."""
        return cls(unet_gib=2.84, vae_gib=0.18, image_encoder_gib=1.18)


@dataclass(frozen=True)
class Workload:
    """The size of one clip: what activations scale with."""

    frames: int
    width: int
    height: int

    @property
    def scale(self) -> float:
        """Activation size relative to SVD-XT's 25 frames at 1024x576."""
        return (self.frames / _REF_FRAMES) * (self.width * self.height / _REF_PIXELS)

    @property
    def frame_scale(self) -> float:
        """The size of one decoded frame relative to 1024x576."""
        return self.width * self.height / _REF_PIXELS


@dataclass(frozen=True)
class PlanSettings:
    """The host's choices for the fast plan (issue 8); the defaults are the measured-safe ones."""

    # fp16 keeps the output closest to the seed recipe; bf16 has the range fp16 lacks.
    fast_dtype: DType = "float16"
    # "max-autotune-no-cudagraphs" tunes matmuls and convolutions; "reduce-overhead" adds CUDA
    # graphs (untested with draft quality, which keeps one graph's output for the next call);
    # "default" compiles fastest.
    compile_mode: str = "max-autotune-no-cudagraphs"
    # torch.compile's backend: "inductor" generates kernels; tests use "aot_eager" or "eager" to
    # check dynamo's graph capture and guards without minutes of C++ compilation on a CPU.
    compile_backend: str = "inductor"
    fast_decode_chunk: int = DEFAULT_DECODE_CHUNK
    # Inductor's on-disk cache (compiled graphs, autotuning picks, Triton kernels). On a volume
    # that outlives the process, a restart loads the fast plan's kernels instead of compiling
    # them again; None leaves torch's default (a temporary folder, lost with the container).
    compile_cache_dir: str | None = None
    # Whether "auto" may pick the fast plan. Its minutes of compiling pay off over a bot's many
    # clips, not over the one clip of `svd-animate` (which asks for it with --memory-mode fast).
    auto_compile: bool = True


@dataclass(frozen=True)
class Plan:
    """How to place and run the pipeline; `name` is what results and logs report."""

    name: PlanName
    device: str
    dtype: DType
    placement: Placement = "device"
    forward_chunking: bool = False
    # The most frames the VAE decodes at once (a user may ask for fewer, never more).
    decode_chunk_size: int = DEFAULT_DECODE_CHUNK
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    compile_cache_dir: str | None = None

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


def base_dtype(device: str) -> DType:
    """The dtype every non-fast plan runs in: fp16 on CUDA (the published variant), fp32 on CPU."""
    return "float16" if device.startswith("cuda") else "float32"


def make_plan(name: PlanName, device: str, settings: PlanSettings | None = None) -> Plan:
    """The plan called `name` on `device` (a plan's memory effects only apply on CUDA)."""
    settings = settings or PlanSettings()
    dtype = base_dtype(device)
    if name == "fast":
        cuda = device.startswith("cuda")
        return Plan(
            "fast",
            device,
            settings.fast_dtype if cuda else dtype,
            decode_chunk_size=settings.fast_decode_chunk,
            compile=True,
            # Autotuning and CUDA graphs are GPU features; inductor's default mode serves the CPU.
            compile_mode=settings.compile_mode if cuda else "default",
            compile_backend=settings.compile_backend,
            compile_cache_dir=settings.compile_cache_dir,
        )
    if name in ("full", "cpu"):
        return Plan(name, device, dtype)
    if name == "offload":
        return Plan("offload", device, dtype, placement="model_offload")
    if name == "offload_chunked":
        return Plan(
            "offload_chunked",
            device,
            dtype,
            placement="model_offload",
            forward_chunking=True,
            decode_chunk_size=CHUNKED_DECODE_CHUNK,
        )
    if name == "sequential":
        # The last resort also takes every other saving: it must fit where nothing else did.
        return Plan(
            "sequential",
            device,
            dtype,
            placement="sequential_offload",
            forward_chunking=True,
            decode_chunk_size=CHUNKED_DECODE_CHUNK,
        )
    raise ValueError(f"unknown plan {name!r}")


def estimate_peak_gib(plan: Plan, footprint: Footprint, workload: Workload) -> float:
    """Estimated peak GPU memory of one clip under `plan`, in GiB."""
    unet_act = (
        (_UNET_ACTIVATIONS_CHUNKED_GIB if plan.forward_chunking else _UNET_ACTIVATIONS_GIB)
        + (_KEPT_FEATURE_GIB if plan.placement == "device" else 0.0)
    ) * workload.scale
    chunk = min(plan.decode_chunk_size, workload.frames)
    decode_act = _DECODE_GIB_PER_FRAME * chunk * workload.frame_scale
    if plan.placement == "device":
        # All weights stay; the peak is the larger of the denoising and the decoding phase.
        peak = footprint.total_gib + max(unet_act, decode_act)
        if plan.compile:
            peak += _COMPILE_HEADROOM_GIB
    elif plan.placement == "model_offload":
        # One model at a time: the UNet while denoising, the VAE while decoding.
        peak = max(
            footprint.unet_gib + unet_act,
            footprint.vae_gib + decode_act,
            footprint.image_encoder_gib,
        )
    else:
        peak = _SEQUENTIAL_WEIGHTS_GIB + max(unet_act, decode_act)
    return peak + _RUNTIME_OVERHEAD_GIB


def fits(plan: Plan, free_gib: float, footprint: Footprint, workload: Workload) -> bool:
    """Whether `plan` should fit in `free_gib` of free VRAM, with a safety margin."""
    return estimate_peak_gib(plan, footprint, workload) <= free_gib * _SAFETY


def choose_plan(
    *,
    device: str,
    free_gib: float | None,
    footprint: Footprint,
    workload: Workload,
    memory_mode: MemoryMode = "auto",
    settings: PlanSettings | None = None,
) -> Plan:
    """The plan to start with.

    `memory_mode` other than "auto" is the host's override and is taken as is. Otherwise: "cpu"
    when there is no GPU budget (`free_gib` None), else the first plan, most room first, whose
    estimate fits (not "fast" unless `settings.auto_compile`); when none does, "sequential",
    which is the least any plan can use.
    """
    if memory_mode != "auto":
        if memory_mode not in GPU_PLANS:
            raise ValueError(f"unknown memory mode {memory_mode!r}")
        return make_plan(memory_mode, device, settings)
    if free_gib is None:
        return make_plan("cpu", device, settings)
    for name in GPU_PLANS:
        if name == "fast" and settings is not None and not settings.auto_compile:
            continue
        plan = make_plan(name, device, settings)
        if fits(plan, free_gib, footprint, workload):
            return plan
    return make_plan("sequential", device, settings)


def next_plan(plan: Plan, settings: PlanSettings | None = None) -> Plan | None:
    """The plan to retry with after running out of memory under `plan`; None after the last."""
    if plan.name == "cpu":
        return None
    index = GPU_PLANS.index(plan.name)
    if index + 1 == len(GPU_PLANS):
        return None
    return make_plan(GPU_PLANS[index + 1], plan.device, settings)


def resident_capacity(
    *,
    free_gib: float,
    plan: Plan,
    footprint: Footprint,
    workload: Workload,
    models: int,
) -> int:
    """How many models of `footprint` can stay loaded at once (at least 1, at most `models`).

    `free_gib` is the memory the models' weights live in: free VRAM for plans that keep the
    weights on the GPU, free RAM for offloading plans and the CPU. The first model needs its
    whole plan's peak; each further one needs its weights (they sit idle while another runs).
    """
    if plan.on_cuda and plan.placement == "device":
        need_first = estimate_peak_gib(plan, footprint, workload)
    else:
        need_first = footprint.total_gib
    spare = free_gib * _SAFETY - need_first
    extra = int(spare // footprint.total_gib) if footprint.total_gib > 0 and spare > 0 else 0
    return max(1, min(models, 1 + extra))

"""Putting a loaded pipeline into the shape a memory plan asks for.

`place()` applies a `Plan` (see plans.py) to a freshly loaded pipeline: dtype, device or CPU
offload, forward chunking, and for the fast plan the speed work of issue 8 (fused attention
projections, channels-last convolutions, torch.compile of the UNet and the VAE decoder). The
compiled modules are specialised to fixed shapes (dynamic=False); the engine warms them up for
the landscape and portrait sizes at load time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

from generation.models import TORCH_DTYPES, Pipeline
from generation.plans import Plan

log = logging.getLogger(__name__)

# Per compiled function: 2 orientations x (a full decode chunk + a remainder) x a few models,
# with room to spare. Past the limit dynamo silently runs eager, which would hide a slowdown,
# so the engine's warm-up checks recompiles instead of relying on this.
_RECOMPILE_LIMIT = 64


def place(pipe: Pipeline, plan: Plan) -> None:
    """Apply `plan` to `pipe` (loaded on the CPU in the plan's base dtype), in place."""
    dtype = TORCH_DTYPES[plan.dtype]
    if pipe.unet.dtype != dtype:
        pipe.to(dtype=dtype)
    if plan.forward_chunking:
        # Feed-forward layers one batch item at a time: same result, a fraction of the memory.
        pipe.unet.enable_forward_chunking()
    if plan.placement == "device" or not plan.on_cuda:
        if plan.placement != "device":
            log.info("plan %s: offloading has no effect without a GPU", plan.name)
        pipe.to(plan.device)
    elif plan.placement == "model_offload":
        pipe.enable_model_cpu_offload(device=plan.device)
    else:
        pipe.enable_sequential_cpu_offload(device=plan.device)
    if plan.compile:
        speed_up(pipe, plan)


def speed_up(pipe: Pipeline, plan: Plan) -> None:
    """The fast plan: fewer, larger kernels that compute the same function."""
    fused = fuse_attention_projections(pipe.unet) + fuse_attention_projections(pipe.vae)
    log.info("fused the projections of %d attention layers", fused)
    channels_last(pipe.unet)
    channels_last(pipe.vae)
    if plan.on_cuda:
        _tune_cuda(plan.compile_mode or "default")
    if plan.compile_cache_dir is not None and plan.compile_backend == "inductor":
        use_compile_cache(Path(plan.compile_cache_dir))
    limit_recompiles(_RECOMPILE_LIMIT)
    options: dict[str, object] = {"backend": plan.compile_backend, "dynamic": False}
    if plan.compile_backend == "inductor":
        options["mode"] = plan.compile_mode or "default"
    # Shapes are fixed per orientation; dynamic=False keeps dynamo from generalising after the
    # second shape (which would give slower kernels for both).
    pipe.unet.compile(**options)
    pipe.vae.decoder.compile(**options)


def fuse_attention_projections(model: torch.nn.Module) -> int:
    """Fuse q/k/v (self-attention) and k/v (cross-attention) into one matmul each.

    diffusers' `fuse_qkv_projections()` on the SVD UNet only looks for its newer attention
    class, and the SVD UNet uses the older `Attention`, so this does the same work directly.
    """
    count = 0
    processor = FusedAttnProcessor2_0()
    for module in model.modules():
        if isinstance(module, Attention) and not module.fused_projections:
            module.fuse_projections(fuse=True)
            module.set_processor(processor)  # type: ignore[arg-type]  # narrower hint than use
            count += 1
    return count


def channels_last(model: torch.nn.Module) -> None:
    """NHWC weights for 2-D convolutions (the fast layout for cuDNN and inductor). 3-D
    (temporal) convolutions have no channels-last form for 5-D weights and stay as they are."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def limit_recompiles(limit: int) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def _tune_cuda(compile_mode: str) -> None:
    """Process-wide switches; the engine owns the GPU, so setting them here is safe."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    inductor = torch._inductor.config
    # As in diffusers' "accelerate inference" guide: 1x1 convolutions as matmuls, and, with the
    # autotuning modes, coordinate descent on top of the autotuner's pick. Inductor applies it in
    # any mode, and it about doubles the compile: "default" is the mode for compiling sooner.
    inductor.conv_1x1_as_mm = True
    tune = compile_mode.startswith("max-autotune")
    inductor.coordinate_descent_tuning = tune
    inductor.coordinate_descent_check_all_directions = tune


def use_compile_cache(directory: Path) -> bool:
    """Keep inductor's caches in `directory` (its FX graph cache, autotuning results and Triton
    kernels all live under TORCHINDUCTOR_CACHE_DIR, which torch reads at each compile), so that a
    restart with the same torch, GPU and model shapes loads the kernels instead of compiling them.
    The folder is only a cache: when it cannot be used, compiling goes on without it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        log.warning("compile cache %s is not writable (%s); compiling without it", directory, exc)
        return False
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory.resolve())
    inductor = torch._inductor.config
    inductor.fx_graph_cache = True
    inductor.autotune_local_cache = True
    return True


def compile_cache_counts() -> dict[str, int]:
    """Inductor graphs loaded from the on-disk cache ("hits") or compiled ("misses") so far."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": inductor["fxgraph_cache_hit"], "misses": inductor["fxgraph_cache_miss"]}


def compile_counters() -> dict[str, int]:
    """Dynamo's counts of compiled frames and recompilations so far in this process."""
    from torch._dynamo.utils import counters

    # A recompile is a new graph, so unique_graphs counts them (torch leaves
    # counters["recompiles"] empty).
    return {
        "frames": counters["frames"]["total"],
        "unique_graphs": counters["stats"]["unique_graphs"],
    }

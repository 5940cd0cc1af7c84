"""Loading SVD pipelines, what they weigh, and which of several configured models stay loaded.

A model is a hub id or a local folder, loaded with `StableVideoDiffusionPipeline.from_pretrained`
(the fp16 variant on CUDA, falling back to the full-precision files when a repository has no
variant). `ModelPool` keeps the models that fit loaded, least recently used first out.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import StableVideoDiffusionPipeline

from generation.feature_cache import FeatureCache
from generation.model_paths import looks_like_path
from generation.plans import GIB, DType, Footprint, Plan

log = logging.getLogger(__name__)

# A loaded `StableVideoDiffusionPipeline`. diffusers builds its classes behind lazy imports and
# registers components with setattr, so a type checker sees neither `pipe.unet` nor the inherited
# methods; the code treats pipelines as the dynamic objects they are.
Pipeline = Any

TORCH_DTYPES: dict[DType, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def quiet_libraries(*, downloads: bool = True) -> None:
    """diffusers' and transformers' own progress bars and chatter (a bar per load, carriage
    returns in a log, advice such as installing torchvision that this project does not need)
    off; our own logs say what loads. Hub download bars stay unless `downloads` is False: a
    first start downloads gigabytes, and a host wants to see that moving."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()
    if not downloads:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


class PipelineLoader(Protocol):
    """Makes a pipeline for a model name in a dtype, on the CPU (the engine places it after)."""

    def __call__(self, model: str, dtype: torch.dtype) -> Pipeline: ...


class PretrainedLoader:
    """Loads from a hub id or a local folder, the path real weights take."""

    def __init__(self, *, cache_dir: str | Path | None = None, local_files_only: bool = False):
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.local_files_only = local_files_only

    def __call__(self, model: str, dtype: torch.dtype) -> Pipeline:
        if looks_like_path(model):
            if not Path(model).expanduser().is_dir():
                raise FileNotFoundError(f"the model folder {model} does not exist")
            # diffusers does not expand "~" (nothing in between does): it would take
            # "~/models/svd" for a hub id, after every check here had found the folder.
            model = str(Path(model).expanduser())
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "cache_dir": self.cache_dir,
            "local_files_only": self.local_files_only,
        }
        pipe: Pipeline
        if dtype == torch.float16:
            # The fp16 variant halves the download and the load; not every repository has one.
            try:
                pipe = StableVideoDiffusionPipeline.from_pretrained(model, variant="fp16", **kwargs)
            except ValueError as exc:
                if "variant" not in str(exc):
                    raise
                log.info("%s has no fp16 variant; loading its full-precision files", model)
                pipe = StableVideoDiffusionPipeline.from_pretrained(model, **kwargs)
        else:
            pipe = StableVideoDiffusionPipeline.from_pretrained(model, **kwargs)
        # The engine reports progress itself.
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def num_frames(self, model: str) -> int | None:
        """The model's frame count from its `unet/config.json`, without loading weights."""
        config = _unet_config_path(model, self.cache_dir, self.local_files_only)
        if config is None:
            return None
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("num_frames")
        except (OSError, ValueError):
            return None
        return value if isinstance(value, int) and value > 0 else None


def _unet_config_path(model: str, cache_dir: str | None, local_files_only: bool) -> Path | None:
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / "unet" / "config.json"
        return path if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                model,
                "unet/config.json",
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
    except Exception as exc:  # offline, unknown repository, gated...: the caller loads instead
        log.debug("could not read %s's unet config: %s", model, exc)
        return None


def footprint_of(pipe: Pipeline) -> Footprint:
    """The measured weight sizes of a loaded pipeline."""

    def gib(module: torch.nn.Module) -> float:
        return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB

    return Footprint(
        unet_gib=gib(pipe.unet), vae_gib=gib(pipe.vae), image_encoder_gib=gib(pipe.image_encoder)
    )


def free_ram_gib() -> float:
    """Memory the OS could give us now (MemAvailable), in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB


def release_memory(device: str) -> None:
    """Give freed tensors back: Python's cycles first, then the CUDA caching allocator."""
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class LoadedModel:
    """A pipeline placed on the device under `plan`. Mutable: a step-down replaces the plan."""

    name: str
    pipe: Pipeline
    plan: Plan
    footprint: Footprint
    num_frames: int
    # Draft quality's deep-feature cache, installed on the UNet at load.
    feature_cache: FeatureCache
    # (width, height) shapes the compiled modules were warmed up for.
    warm_shapes: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    compile_seconds: float = 0.0
    # Inductor graphs the warm-up loaded from the compile cache, and those it had to compile.
    cache_hits: int = 0
    cache_misses: int = 0
    # A smaller decode chunk than the plan's, after the decode ran out of memory under it.
    decode_chunk_cap: int | None = None


class ModelPool:
    """The loaded models, at most `capacity` at once; the least recently used leaves first."""

    def __init__(
        self,
        load: Callable[[str], LoadedModel],
        *,
        capacity: int,
        release: Callable[[LoadedModel], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._load = load
        self._release = release
        self._clock = clock
        self.capacity = capacity
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def __contains__(self, name: object) -> bool:
        return name in self._models

    @property
    def names(self) -> list[str]:
        """Loaded models, least recently used first."""
        return list(self._models)

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def peek(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def get(self, name: str) -> tuple[LoadedModel, float]:
        """The loaded model and the seconds it took to load now (0.0 when it was resident)."""
        loaded = self._models.get(name)
        if loaded is not None:
            self._models.move_to_end(name)
            return loaded, 0.0
        while len(self._models) >= self.capacity:
            self.evict(next(iter(self._models)))
        started = self._clock()
        loaded = self._load(name)
        self._models[name] = loaded
        return loaded, self._clock() - started

    def evict(self, name: str) -> None:
        loaded = self._models.pop(name, None)
        if loaded is not None:
            log.info("unloading %s to make room", name)
            self._release(loaded)

    def replace(self, loaded: LoadedModel) -> None:
        """Put a reloaded model (e.g. under a smaller plan) in place of the old one."""
        self._models[loaded.name] = loaded
        self._models.move_to_end(loaded.name)

    def clear(self) -> None:
        for name in list(self._models):
            self.evict(name)

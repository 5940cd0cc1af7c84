"""Feature caching across denoising steps: the "draft" quality a member may choose (issue 8).

DeepCache (Ma, Fang and Wang, 2023, arXiv:2312.00858) observes that a UNet's deep features change
little from one denoising step to the next, while the outermost level, which carries the fine
detail, changes a lot. So on most steps only that outer level is computed: `conv_in`, the first
down block, the last up block and `conv_out`, at full latent resolution; everything between them
(the lower down blocks, the middle block and all other up blocks) is replaced by the output the
second-to-last up block gave on the last full step. With an interval of 3, one step in three
runs the whole UNet.

This changes the output: it is a speed/quality trade a member picks, never the default. The
guided batch, the sampler, the steps and the frames stay as asked.

How: the deep blocks' `forward` is wrapped. On a "fill" step they run and the one feature that
matters is kept; on a "reuse" step they return at once: the second-to-last up block returns the
kept feature, the others hand back their input (the UNet only counts their outputs, it never
reads them), so the skipped levels cost neither time nor memory. The mode is a plain attribute
set between steps, outside any compiled code: under torch.compile each mode is one graph per
shape, compiled at warm-up. The wrappers leave the UNet's own `forward` alone, so accelerate's
offload hooks keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

Mode = Literal["off", "fill", "reuse"]


class FeatureCache:
    """Caching for one `UNetSpatioTemporalConditionModel`; one clip at a time."""

    def __init__(self, unet: torch.nn.Module) -> None:
        down: Any = unet.down_blocks
        mid: Any = unet.mid_block
        up: Any = unet.up_blocks
        if len(down) < 2 or len(up) < 2:
            raise ValueError("feature caching needs a UNet with at least two levels")
        self.mode: Mode = "off"
        self.interval = 1
        self._steps = 0
        # The second-to-last up block's output on the last full step.
        self._feature: torch.Tensor | None = None
        # Steps planned to run whole / on the kept feature (counted here, between steps: a
        # counter inside the compiled wrappers would be a new constant, and a recompile, per call).
        self.full_steps = 0
        self.cached_steps = 0
        for block in list(down)[1:]:
            outputs = len(block.resnets) + (1 if block.downsamplers is not None else 0)
            block.forward = self._skippable_down(block.forward, outputs)
        mid.forward = self._skippable(mid.forward)
        for block in list(up)[:-2]:
            block.forward = self._skippable(block.forward)
        up[-2].forward = self._cached(up[-2].forward)

    # --- the schedule, driven by the engine between steps -------------------------------------

    def start(self, interval: int, steps: int) -> None:
        """Begin a clip of `steps` steps: every `interval`-th runs whole (1: no caching), the
        first one too."""
        if interval < 1:
            raise ValueError(f"the cache interval must be at least 1, not {interval}")
        self.interval = interval
        self._steps = steps
        self.full_steps = self.cached_steps = 0
        self._feature = None
        self._plan("fill" if interval > 1 else "off")

    def step_done(self, step: int) -> None:
        """Step `step` (0-based) has ended; choose how the next one runs."""
        if step + 1 >= self._steps:
            return
        if self.interval > 1:
            self._plan("fill" if (step + 1) % self.interval == 0 else "reuse")
        else:
            self._plan("off")

    def stop(self) -> None:
        """End the clip and drop the kept feature (about 0.6 GB for SVD-XT at 1024x576, fp16)."""
        self.mode = "off"
        self._feature = None

    def _plan(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "reuse":
            self.cached_steps += 1
        else:
            self.full_steps += 1

    # --- the wrappers ----------------------------------------------------------------------------

    def _cached(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            if self.mode == "reuse":
                if self._feature is None:
                    raise RuntimeError("a cached step came before any full step")
                return self._feature
            feature = forward(*args, **kwargs)
            if self.mode == "fill":
                self._feature = feature
            return feature

        return cached_forward

    def _skippable(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def skippable_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.mode == "reuse":
                return hidden_states
            return forward(hidden_states, *args, **kwargs)

        return skippable_forward

    def _skippable_down(self, forward: Callable[..., Any], outputs: int) -> Callable[..., Any]:
        def skippable_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.mode == "reuse":
                # The UNet slices its skip list by count; the entries are never read.
                return hidden_states, (hidden_states,) * outputs
            return forward(hidden_states, *args, **kwargs)

        return skippable_forward

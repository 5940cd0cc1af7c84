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
shape, compiled at warm-up (two modes there: compiled plans keep the feature on every whole step,
so best quality runs the "fill" graph too). The wrappers leave the UNet's own `forward` alone, so
accelerate's offload hooks keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

Mode = Literal["off", "fill", "reuse"]


class FeatureCache:
    """Caching for one `UNetSpatioTemporalConditionModel`; one clip at a time."""

    def __init__(
        self, unet: torch.nn.Module, *, always_keep: bool = False, keep_on: str | None = None
    ) -> None:
        """`always_keep`: keep the deep feature on every whole step, draft or not. Under
        torch.compile that makes best quality and a draft's whole steps the same graph, so
        warming up compiles two graphs per shape rather than three, for the price of holding
        the feature (0.55 GiB for SVD-XT at 1024x576 in fp16) between steps.
        `keep_on`: a device to keep it on instead of the GPU ("cpu" for plans that offload, which
        are chosen because VRAM is short; one copy each way per step is small beside their step)."""
        down: Any = unet.down_blocks
        mid: Any = unet.mid_block
        up: Any = unet.up_blocks
        if len(down) < 2 or len(up) < 2:
            raise ValueError("feature caching needs a UNet with at least two levels")
        self.mode: Mode = "off"
        self._whole: Mode = "fill" if always_keep else "off"
        self._keep_on = keep_on
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
        self._plan("fill" if interval > 1 else self._whole)

    def step_done(self, step: int) -> None:
        """Step `step` (0-based) has ended; choose how the next one runs."""
        if step + 1 >= self._steps:
            return
        if self.interval > 1:
            self._plan("fill" if (step + 1) % self.interval == 0 else "reuse")
        else:
            self._plan(self._whole)

    def stop(self) -> None:
        """End the clip and drop the kept feature."""
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
        def cached_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.mode == "reuse":
                if self._feature is None:
                    raise RuntimeError("a cached step came before any full step")
                if self._keep_on is None:
                    return self._feature
                return self._feature.to(hidden_states.device)
            feature = forward(hidden_states, *args, **kwargs)
            if self.mode == "fill":
                self._feature = feature if self._keep_on is None else feature.to(self._keep_on)
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

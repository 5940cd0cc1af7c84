"""Waiting-time estimates from recent clip durations.

A clip's work grows with frames × steps (a draft's cached steps count for less), so durations are
kept per *cost unit* (one frame through one whole denoising step) and the estimate for a job is
its cost times the median of the recent seconds per unit. The median shrugs off the odd clip that
paid for a model switch or ran beside a slow encoder. Before any history, a host-supplied guess
stands in; the service can seed the history from the database (`JobStore.recent_durations`) so a
restart does not forget it.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence

from generation.options import AnimateOptions

# A draft's step on the kept deep feature costs this share of a whole UNet step: 66.6 of 159.9
# TFLOP for SVD-XT (`python -m bench.draft --flops`).
REUSED_STEP_SHARE = 0.42


def job_cost(options: AnimateOptions, frames: int) -> int:
    """Cost units of one clip: frames × denoising steps, a draft's reused steps counted at their
    share of a whole one. `frames` is the model's own count when the options leave it open
    (`Engine.frames_for`)."""
    steps = options.num_inference_steps
    whole = math.ceil(steps / options.cache_interval)  # steps 0, n, 2n, ... (feature_cache.py)
    effective = whole + REUSED_STEP_SHARE * (steps - whole)
    return max(1, round((options.num_frames or frames) * effective))


class EtaEstimator:
    """Median seconds per cost unit over the last `window` finished clips."""

    def __init__(self, *, default_seconds_per_unit: float = 0.05, window: int = 20) -> None:
        # 0.05 s/unit ≈ 30 s for a 25-frame, 25-step SVD-XT clip: a mid-range GPU's figure.
        if default_seconds_per_unit <= 0 or window < 1:
            raise ValueError("default_seconds_per_unit and window must be positive")
        self._default = default_seconds_per_unit
        self._rates: deque[float] = deque(maxlen=window)

    def record_duration(self, cost_units: float, seconds: float) -> None:
        """Remember how long a finished clip of `cost_units` took to generate."""
        if cost_units > 0 and seconds >= 0:
            self._rates.append(seconds / cost_units)

    def seed(self, history: Iterable[tuple[float, float]]) -> None:
        """Load (cost_units, seconds) pairs, oldest first, e.g. from the database at start."""
        for cost_units, seconds in history:
            self.record_duration(cost_units, seconds)

    @property
    def has_history(self) -> bool:
        return bool(self._rates)

    def seconds_per_unit(self) -> float:
        return statistics.median(self._rates) if self._rates else self._default

    def estimate(self, cost_units: float) -> float:
        """Expected seconds to generate a clip of `cost_units`."""
        return cost_units * self.seconds_per_unit()


def start_times(running: Iterable[float], waiting: Sequence[float], gpus: int) -> list[float]:
    """Seconds until a GPU starts each waiting job (`waiting`: their expected durations, in
    service order), given the seconds left of each running one: each job goes to the GPU that
    frees first. (An average over the GPUs would tell the first in line to wait half of a long
    clip on one GPU while the other is about to finish a short one.)"""
    free_at = [0.0] * max(gpus, 1)
    for left in sorted(running):  # more running than GPUs (one just left): they queue too
        heapq.heapreplace(free_at, free_at[0] + max(left, 0.0))
    starts = []
    for seconds in waiting:
        start = free_at[0]
        starts.append(start)
        heapq.heapreplace(free_at, start + seconds)
    return starts

"""Optional Prometheus metrics for the queue and the worker (`METRICS_PORT`).

Everything lives in a `CollectorRegistry` the `Metrics` object owns, never in prometheus_client's
global one, so tests and several runtimes in one process do not collide. The worker only calls
the methods below; without a `Metrics` object it records nothing and prometheus-client need not
be installed.
"""

from __future__ import annotations

import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Seconds: clips take from about a second (tiny model, small GPU jobs) to many minutes (CPU).
_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "svdbot"):
        self.registry = registry if registry is not None else CollectorRegistry()
        ns = namespace
        self.queue_length = Gauge(
            "queue_waiting_jobs", "Jobs waiting for the GPU", namespace=ns, registry=self.registry
        )
        self.running = Gauge(
            "queue_running_jobs",
            "Jobs generating or encoding",
            namespace=ns,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "job_wait_seconds",
            "Seconds from submit to the GPU starting the job",
            namespace=ns,
            registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.phase_seconds = Histogram(
            "job_phase_seconds",
            "Seconds per phase of a job (generate, encode, total)",
            ["phase"],
            namespace=ns,
            registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.jobs = Counter(
            "jobs",
            "Jobs finished, by outcome (done, failed, cancelled, interrupted)",
            ["outcome"],
            namespace=ns,
            registry=self.registry,
        )
        self.failures = Counter(
            "job_failures",
            "Failed jobs by reason (oom, timeout, error, invalid)",
            ["reason"],
            namespace=ns,
            registry=self.registry,
        )
        self.gpu_memory_bytes = Gauge(
            "gpu_memory_allocated_bytes",
            "torch.cuda.memory_allocated() after the last job",
            namespace=ns,
            registry=self.registry,
        )
        self.ready = Gauge(
            "worker_ready", "1 once the model is loaded", namespace=ns, registry=self.registry
        )

    def set_queue(self, waiting: int, running: int) -> None:
        self.queue_length.set(waiting)
        self.running.set(running)

    def observe_wait(self, seconds: float) -> None:
        self.wait_seconds.observe(seconds)

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(seconds)

    def finished(self, outcome: str, reason: str | None = None) -> None:
        self.jobs.labels(outcome=outcome).inc()
        if outcome == "failed":
            self.failures.labels(reason=reason or "error").inc()

    def given_up(self, reason: str) -> None:
        """A clip the bot failed after the GPU was done with it, or at a restart: Discord
        refused it for a day ("undeliverable"), its files were lost, its model is gone, it
        crashed the bot twice. Counted with the other failures, by reason."""
        self.failures.labels(reason=reason).inc()

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def observe_gpu_memory(self) -> None:
        # Only if the engine already imported torch: metrics must not pull torch in by themselves.
        torch: Any = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        self.gpu_memory_bytes.set(torch.cuda.memory_allocated())


def serve_metrics(metrics: Metrics, port: int, addr: str = "0.0.0.0") -> Any:
    """Serve `metrics` at http://addr:port/metrics from a daemon thread; returns the server
    (call `.shutdown()` on it to stop)."""
    started: Any = start_http_server(port, addr=addr, registry=metrics.registry)
    # prometheus-client returns (server, thread) since 0.17 and None before.
    return started[0] if isinstance(started, tuple) else started

"""The optional Prometheus metrics: own registry, served over HTTP."""

from __future__ import annotations

import urllib.request

from generation.metrics import Metrics, serve_metrics


def test_two_metrics_objects_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.finished("failed", "timeout")
    assert first.registry.get_sample_value("svdbot_job_failures_total", {"reason": "timeout"}) == 1
    assert (
        second.registry.get_sample_value("svdbot_job_failures_total", {"reason": "timeout"}) is None
    )


def test_metrics_are_served_over_http() -> None:
    metrics = Metrics()
    metrics.set_queue(waiting=3, running=1)
    metrics.observe_phase("encode", 0.4)
    metrics.observe_gpu_memory()  # no CUDA here: a no-op, not an error
    server = serve_metrics(metrics, 0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert "svdbot_queue_waiting_jobs 3.0" in text
    assert 'svdbot_job_phase_seconds_count{phase="encode"} 1.0' in text

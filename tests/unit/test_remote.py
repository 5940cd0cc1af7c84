"""The scale-out pieces that need no Redis: the wire format, GPU pinning, its settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import SettingsError, load_settings
from generation.jobs import EventKind, JobEvent
from generation.remote.broker import WorkerInfo
from generation.remote.gpus import NoFreeGpu, claim_gpu
from generation.remote.wire import Keys, event_from_json, event_to_json
from generation.results import EncodedClip


def test_a_done_event_crosses_the_wire_unchanged() -> None:
    clip = EncodedClip(
        path=Path("/tmp/out/abc.mp4"),
        format="mp4",
        size_bytes=1234,
        width=1024,
        height=576,
        frame_count=25,
        fps=7.0,
        seconds=25 / 7,
        reduced=True,
    )
    event = JobEvent(
        "abc",
        EventKind.DONE,
        user_id=42,
        clip=clip,
        seed=7,
        model="m",
        plan="fast",
        hints=("static",),
        seconds=9.5,
        cost_units=625,
    )
    assert event_from_json(event_to_json(event)) == event


def test_progress_and_failure_events_round_trip() -> None:
    step = JobEvent("j", EventKind.STEP, user_id=1, step=3, total=25, eta_seconds=4.5)
    failed = JobEvent("j", EventKind.FAILED, user_id=1, error="Out of memory.", reason="oom")
    for event in (step, failed):
        assert event_from_json(event_to_json(event)) == event


@pytest.mark.parametrize("text", ["", "{}", '{"kind": "nope", "job_id": "x"}', "[1, 2]"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        event_from_json(text)


def test_keys_live_under_the_prefix() -> None:
    keys = Keys("guild-bot")
    names = [keys.stream, keys.events, keys.input("j"), keys.result("j"), keys.worker("w1")]
    assert all(name.startswith("guild-bot:") for name in names)
    assert len(set(names)) == len(names)


def test_worker_heartbeat_round_trips() -> None:
    info = WorkerInfo("w1", "busy", "job1", {"model": 25})
    assert WorkerInfo.from_json(info.to_json()) == info


def test_each_worker_takes_a_different_gpu(tmp_path: Path) -> None:
    first = claim_gpu(tmp_path, count=2)
    second = claim_gpu(tmp_path, count=2)
    assert {first.index, second.index} == {0, 1}
    with pytest.raises(NoFreeGpu, match="already has a worker"):
        claim_gpu(tmp_path, count=2)
    first.release()
    again = claim_gpu(tmp_path, count=2)
    assert again.index == first.index
    again.release()
    second.release()


def test_a_gpu_is_free_again_when_its_worker_process_dies(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "from generation.remote.gpus import claim_gpu\n"
        f"lock = claim_gpu(pathlib.Path({str(tmp_path)!r}), 1)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=root,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(NoFreeGpu):
            claim_gpu(tmp_path, 1)
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    lock = claim_gpu(tmp_path, 1)
    assert lock.index == 0
    lock.release()


def test_reclaim_must_outlast_the_job_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="REDIS_RECLAIM_SECONDS must be longer"):
        load_settings(job_timeout_seconds=600, redis_reclaim_seconds=300)
    settings = load_settings(job_timeout_seconds=300)
    assert settings.reclaim_seconds > 2 * 300
    assert settings.queue_backend == "local"


def test_an_unknown_backend_names_the_choices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"QUEUE_BACKEND.*'local'.*'redis'"):
        load_settings(queue_backend="rabbit")


def test_check_says_which_queue_and_whether_redis_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.doctor import _queue_backend
    from tests.fakes.redis_server import free_port

    monkeypatch.chdir(tmp_path)
    local = _queue_backend(load_settings())
    assert local.ok and "this machine" in local.detail
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    down = _queue_backend(load_settings(queue_backend="redis", redis_url=url))
    assert not down.ok and down.fatal
    assert "cannot reach Redis at redis://127.0.0.1:" in down.detail
    assert "secret" not in down.detail


class Acks:
    def __init__(self) -> None:
        self.count = 0

    async def ack(self) -> None:
        self.count += 1


async def test_a_message_with_a_job_id_that_is_a_path_is_dropped_and_names_no_file(
    tmp_path: Path,
) -> None:
    # Anyone who can write to Redis could name a file for the worker to delete: its picture,
    # work_dir/{job_id}.png, is removed after the job, even a job it refused.
    from generation.fake_engine import FakeEngine
    from generation.remote.worker import RemoteWorker
    from generation.worker import LocalJobQueue

    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    worker = RemoteWorker(
        LocalJobQueue(FakeEngine(frames=4), output_dir=tmp_path / "out"),
        redis_url="redis://127.0.0.1:1/0",  # never reached
        work_dir=tmp_path / "a" / "b",
        reclaim_seconds=60,
    )
    context = Acks()
    await worker.handle("../../victim", {}, 1_000, 1, 0, context)  # type: ignore[arg-type]
    assert victim.read_bytes() == b"keep me" and context.count == 1


async def test_a_workers_heartbeat_says_what_the_bot_may_count_on(tmp_path: Path) -> None:
    # The bot counts "ready" and "busy" workers as GPUs. A worker whose disk is full is neither,
    # unless a clip is on its GPU: then it is busy with that clip, or a free GPU elsewhere waits.
    import time

    from generation.fake_engine import FakeEngine
    from generation.remote.worker import RemoteWorker
    from generation.worker import LocalJobQueue

    runtime = LocalJobQueue(FakeEngine(frames=4), output_dir=tmp_path / "out")
    worker = RemoteWorker(
        runtime, redis_url="redis://127.0.0.1:1/0", work_dir=tmp_path / "in", reclaim_seconds=60
    )
    await runtime.start()
    await runtime.loaded()
    try:
        assert worker._info().state == "ready"
        worker._no_room_until = time.monotonic() + 60
        assert worker._info().state == "disk_full"
        worker._held.append("b")
        worker._on_gpu.add("b")
        info = worker._info()
        assert (info.state, info.job_id) == ("busy", "b")
    finally:
        await runtime.stop(0)


def test_files_workers_killed_mid_job_left_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import time

    from bot.worker import STALE_WORK_SECONDS, sweep_stale_work

    old_dir = tmp_path / "host-111" / "inputs"
    live_dir = tmp_path / "host-222" / "outputs"
    old_dir.mkdir(parents=True)
    live_dir.mkdir(parents=True)
    left = old_dir / "abc.png"
    left.write_bytes(b"picture")
    long_ago = time.time() - STALE_WORK_SECONDS - 60
    os.utime(left, (long_ago, long_ago))
    making = live_dir / "def.mp4"
    making.write_bytes(b"clip")
    assert sweep_stale_work(tmp_path) == 1
    assert not left.exists() and making.exists()
    assert old_dir.is_dir()  # a folder stays: an idle worker's is empty, and still its own
    assert sweep_stale_work(tmp_path / "none") == 0


def test_pictures_and_clips_move_on_a_connection_that_waits_long_enough_for_them() -> None:
    # redis-py's 5 s cut every try of an 8 MB clip short on a 1 MB/s link, for ever.
    from generation.remote.broker import BULK_TIMEOUT_SECONDS, connect

    bulk = connect("redis://localhost:6379/0", bulk=True)
    plain = connect("redis://localhost:6379/0")
    assert bulk.connection_pool.connection_kwargs["socket_timeout"] == BULK_TIMEOUT_SECONDS
    assert BULK_TIMEOUT_SECONDS >= 25 * 8  # a 25 MiB picture at 1 Mbit/s, near enough
    assert plain.connection_pool.connection_kwargs.get("socket_timeout", 5) <= 5
    # Nor is a transfer that timed out run three times more at that timeout, holding the
    # bot's dispatch tick for many minutes: its caller tries again.
    from redis.exceptions import TimeoutError as RedisTimeoutError

    assert RedisTimeoutError not in bulk.connection_pool.connection_kwargs["retry_on_error"]
    assert RedisTimeoutError in plain.connection_pool.connection_kwargs["retry_on_error"]

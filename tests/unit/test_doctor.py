"""`svd-bot check`: the findings a host reads before the first start."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from bot import doctor
from bot.service import free_disk_bytes
from bot.settings import Settings


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, database_path=tmp_path / "b.db", **values)  # type: ignore[arg-type]


def test_a_host_without_a_compiler_is_told_the_fast_plan_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    found = doctor._compiler()
    assert not found.ok and not found.fatal  # slower, not broken
    assert "C compiler" in found.detail and "gcc and python3-dev" in found.detail

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    found = doctor._compiler()  # a compiler, but no Python.h
    assert not found.ok and "Python's headers" in found.detail and "C compiler" not in found.detail
    (tmp_path / "Python.h").write_text("")
    assert doctor._compiler().ok


def test_a_cpu_build_of_torch_on_a_gpu_host_is_pointed_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name else None)
    gpu = next(f for f in doctor._torch_and_gpu(settings(tmp_path)) if f.label == "GPU")
    assert not gpu.ok and "CPU-only build" in gpu.detail and "--force-reinstall torch" in gpu.detail

    monkeypatch.setattr(shutil, "which", lambda _name: None)  # a machine with no GPU at all
    gpu = next(f for f in doctor._torch_and_gpu(settings(tmp_path)) if f.label == "GPU")
    assert "no CUDA GPU" in gpu.detail


def test_a_cuda_torch_the_driver_cannot_run_is_pointed_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # PyPI's newest torch wants the newest CUDA; an older driver leaves it without a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name else None)
    gpu = next(f for f in doctor._torch_and_gpu(settings(tmp_path)) if f.label == "GPU")
    assert not gpu.ok and "built for CUDA 13.0" in gpu.detail and "driver" in gpu.detail
    assert "--index-url" in gpu.detail and not gpu.fatal
    # The hosts that set DEVICE=cuda are the likeliest to have a GPU: told the same, fatally.
    gpu = next(
        f for f in doctor._torch_and_gpu(settings(tmp_path, device="cuda")) if f.label == "GPU"
    )
    assert gpu.fatal and "built for CUDA 13.0" in gpu.detail


def test_check_never_shows_the_redis_password(tmp_path: Path) -> None:
    lines: list[str] = []
    for url in ("redis://:s3cret@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=s3cret"):
        config = settings(tmp_path, queue_backend="redis", redis_url=url)
        lines.append(doctor._queue_backend(config).detail)  # nothing listens on port 1
    assert all("127.0.0.1:1/0" in line for line in lines), lines
    assert not [line for line in lines if "s3cret" in line], lines


def test_check_warns_of_a_disk_about_to_refuse_clips(tmp_path: Path) -> None:
    floor = 256 * 2**20

    def shown(free: int | None) -> doctor.Finding:
        return doctor._free_space(tmp_path, floor, lambda _folder: free)

    assert shown(50 * 2**30) == doctor.Finding(
        True, "Free disk space", "50.0 GiB where DATA_DIR is"
    )
    low = shown(1 * 2**30)
    assert not low.ok and not low.fatal and "low" in low.detail and "256 MiB" in low.detail
    full = shown(100 * 2**20)
    assert (
        not full.ok and "new clips are refused" in full.detail and "MIN_FREE_DISK_MB" in full.detail
    )
    assert shown(None).ok  # a disk that cannot be asked stops nothing
    # DATA_DIR not made yet: the disk it will be on (asking makes nothing).
    assert free_disk_bytes(tmp_path / "not" / "yet") is not None
    assert not (tmp_path / "not").exists()


def test_a_misspelled_setting_in_env_is_named_with_what_it_likely_meant(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=abc\nMEMORY_MOD=offload\ndefault_qouta=10\nRESOLUTION=512\nMY_NOTE=x\n"
    )
    from bot.settings import unknown_names

    assert unknown_names() == [
        "MEMORY_MOD (did you mean MEMORY_MODE?)",
        "default_qouta (did you mean DEFAULT_QUOTA?)",
        "MY_NOTE",
    ]
    (found,) = [f for f in doctor.check_all(settings(tmp_path)) if f.label == "Settings (.env)"]
    assert not found.ok and not found.fatal and "MEMORY_MODE?" in found.detail
    (tmp_path / ".env").write_text("DISCORD_TOKEN=abc\nRESOLUTION=512\n")
    assert unknown_names() == []
    # A .env made from the example (as the README's first command does) has none.
    assert unknown_names(Path(__file__).resolve().parents[2] / ".env.example") == []

"""`python -m bot check`: what this host has and what the bot will do with it, in plain words.

It never prints the token, never downloads anything and never loads the model.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from bot.service import free_disk_bytes
from bot.settings import Settings, unknown_names
from generation.model_paths import looks_like_path

if TYPE_CHECKING:
    from generation.plans import Plan

MODEL_DOWNLOAD_GB = 10
# Under this, `check` warns: a busy day's clips (up to 25 MiB each, kept KEEP_FILES_DAYS) would
# soon reach the floor where the bot refuses new ones.
LOW_DISK_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Finding:
    ok: bool
    label: str
    detail: str
    # A problem that stops the bot from running (as opposed to a warning).
    fatal: bool = False


def run_checks(settings: Settings, out: Callable[[str], None] = print) -> int:
    findings = list(check_all(settings))
    width = max(len(f.label) for f in findings)
    for f in findings:
        mark = "ok " if f.ok else ("ERR" if f.fatal else "!  ")
        out(f"[{mark}] {f.label.ljust(width)}  {f.detail}")
    fatal = [f for f in findings if f.fatal and not f.ok]
    out("")
    if fatal:
        out(
            f"{len(fatal)} problem(s) to fix before the bot can run: "
            + "; ".join(f.label for f in fatal)
            + "."
        )
        return 1
    out("Ready: `python -m bot` will start the bot with these settings.")
    return 0


def check_all(settings: Settings) -> list[Finding]:
    findings = [Finding(True, "Python", f"{platform.python_version()} ({sys.executable})")]
    unknown = unknown_names()
    if unknown:
        findings.append(
            Finding(False, "Settings (.env)", "not settings, so ignored: " + ", ".join(unknown))
        )
    findings.extend(_torch_and_gpu(settings))
    findings.extend(_models(settings))
    findings.append(_ffmpeg())
    findings.append(_database(settings.database_path))
    findings.append(_writable("Data folder (DATA_DIR)", settings.data_dir))
    floor = int(settings.min_free_disk_mb * 2**20)
    findings.append(_free_space(settings.data_dir, floor))
    if not settings.database_path.parent.resolve().is_relative_to(settings.data_dir.resolve()):
        findings.append(_free_space(settings.database_path.parent, floor, where="DATABASE_PATH"))
    findings.append(compile_cache(settings))
    findings.append(_token(settings))
    findings.append(_queue_backend(settings))
    return findings


def _queue_backend(settings: Settings) -> Finding:
    if settings.queue_backend == "local":
        return Finding(True, "Queue", "local: clips are made on this machine's GPU")
    import redis

    from generation.remote.wire import Keys

    where = _without_password(settings.redis_url)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        with client:
            client.ping()
            workers = sum(1 for _ in client.scan_iter(match=Keys(settings.redis_prefix).workers))
    except redis.RedisError as exc:
        return Finding(False, "Queue", f"cannot reach Redis at {where}: {exc}", fatal=True)
    detail = f"redis at {where}: reachable, {workers} GPU worker(s) connected"
    if not workers:
        detail += " (start one per GPU with `./run.sh worker`)"
    return Finding(True, "Queue", detail)


def _without_password(url: str) -> str:
    """Where Redis is, without what could be a secret: redis-py takes the password from the
    user part (`redis://:pw@host`) or from the query (`?password=pw`)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return "(not a URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _torch_and_gpu(settings: Settings) -> list[Finding]:
    try:
        import torch
    except ImportError:
        return [Finding(False, "PyTorch", "not installed: run ./run.sh --setup-only", fatal=True)]
    found = [Finding(True, "PyTorch", f"{torch.__version__}")]
    cuda = torch.cuda.is_available()
    if cuda:
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name(0)
        found.append(
            Finding(
                True,
                "GPU",
                f"{name}, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
                f" (CUDA {torch.version.cuda})",
            )
        )
    elif torch.version.cuda is None and shutil.which("nvidia-smi"):
        found.append(
            Finding(
                False,
                "GPU",
                f"this PyTorch ({torch.__version__}) is a CPU-only build, but the machine has an "
                "NVIDIA GPU: clips would be made on the CPU. Install the CUDA build: "
                ".venv/bin/pip install --force-reinstall torch",
                fatal=settings.device == "cuda",
            )
        )
    elif shutil.which("nvidia-smi"):
        # PyPI's newest torch is built for the newest CUDA, which an older driver cannot run.
        found.append(
            Finding(
                False,
                "GPU",
                f"this PyTorch is built for CUDA {torch.version.cuda} but cannot use the NVIDIA "
                "GPU: clips would be made on the CPU. The driver may be too old for that CUDA "
                "(`nvidia-smi` shows the newest it runs): update it, or install a torch built for "
                "an older CUDA, e.g. .venv/bin/pip install --force-reinstall torch --index-url "
                "https://download.pytorch.org/whl/cu126",
                fatal=settings.device == "cuda",
            )
        )
    elif settings.device == "cuda":
        found.append(
            Finding(
                False,
                "GPU",
                "DEVICE=cuda but no CUDA GPU is visible "
                "(driver, container runtime, or a CPU-only torch?)",
                fatal=True,
            )
        )
    else:
        found.append(
            Finding(
                False,
                "GPU",
                "no CUDA GPU: clips will be made on the CPU, which "
                "takes many minutes each at full size. Set RESOLUTION=512 to try.",
            )
        )
    plan, finding = _plan(settings, cuda)
    found.append(finding)
    if plan.compile and plan.on_cuda:
        found.append(_compiler())
    return found


def _compiler() -> Finding:
    """Triton builds a small C module at its first kernel: without a compiler and Python's
    headers the fast plan cannot run (the engine then falls back to plan 'full')."""
    compiler = os.environ.get("CC") or next(
        (name for name in ("gcc", "cc", "clang") if shutil.which(name)), None
    )
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    missing = [
        what
        for what, have in (("a C compiler", compiler), ("Python's headers", headers.exists()))
        if not have
    ]
    if not missing:
        return Finding(True, "Compiler", f"{compiler} and Python.h, for torch.compile")
    return Finding(
        False,
        "Compiler",
        f"no {' or '.join(missing)}: the fast plan's torch.compile cannot run, so clips use "
        "plan 'full' (slower). Install gcc and python3-dev (Debian/Ubuntu).",
    )


def _plan(settings: Settings, cuda: bool) -> tuple[Plan, Finding]:
    import torch

    from generation.images import target_size
    from generation.plans import Footprint, Workload, choose_plan, estimate_peak_gib

    use_cuda = cuda and settings.device != "cpu"
    free_gib = torch.cuda.mem_get_info()[0] / 2**30 if use_cuda else None
    width, height = target_size(16, 9, settings.resolution)
    # SVD-XT's 25 frames: the largest clip the default model makes.
    workload = Workload(frames=25, width=width, height=height)
    footprint = Footprint.svd_fp16()
    plan = choose_plan(
        device="cuda" if use_cuda else "cpu",
        free_gib=free_gib,
        footprint=footprint,
        workload=workload,
        memory_mode=settings.memory_mode,
    )
    if settings.memory_mode != "auto":
        how = "set by MEMORY_MODE"
    else:
        how = "chosen from free VRAM" if use_cuda else "no GPU"
    detail = f"'{plan.name}' ({how}) for {width}x{height} clips of 25 frames"
    if plan.on_cuda:
        detail += f", about {estimate_peak_gib(plan, footprint, workload):.1f} GiB peak VRAM"
    return plan, Finding(True, "Memory plan", detail)


def startup_problems(settings: Settings) -> list[str]:
    """What `python -m bot` checks before it starts, in one line each: the fatal problems of the
    database, the data folder and model folders (cheap: no torch, no network)."""
    checks = [
        _database(settings.database_path),
        _writable("Data folder (DATA_DIR)", settings.data_dir),
        *(f for f in map(_model_folder, settings.models) if f is not None),
    ]
    return [f"{f.label}: {f.detail}" for f in checks if f.fatal and not f.ok]


def _model_folder(model: str) -> Finding | None:
    """The finding for a model given as a folder; None for a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        ok = (path / "model_index.json").is_file()
        detail = f"local folder {path}" if ok else f"{path} has no model_index.json"
        return Finding(ok, "Model (SVD_MODEL)", detail, fatal=not ok)
    if looks_like_path(model):
        detail = f"the folder {model} does not exist (a hub id looks like owner/name)"
        return Finding(False, "Model (SVD_MODEL)", detail, fatal=True)
    return None


def _models(settings: Settings) -> list[Finding]:
    findings = []
    for index, model in enumerate(settings.models):
        label = "Model" if index == 0 else f"Model {index + 1}"
        folder = _model_folder(model)
        if folder is not None:
            findings.append(Finding(folder.ok, label, folder.detail, fatal=folder.fatal))
            continue
        cached = _in_hub_cache(model)
        if cached:
            findings.append(Finding(True, label, f"{model} (in the local Hugging Face cache)"))
        elif settings.hf_offline:
            findings.append(
                Finding(
                    False,
                    label,
                    f"{model} is not in the local cache and HF_OFFLINE is set: it cannot be loaded",
                    fatal=True,
                )
            )
        else:
            findings.append(
                Finding(
                    False,
                    label,
                    f"{model} is not cached: the first start "
                    f"downloads about {MODEL_DOWNLOAD_GB} GB",
                )
            )
    return findings


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        hit = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # a malformed id: treat as not cached
        return False
    return isinstance(hit, str)


def _ffmpeg() -> Finding:
    try:
        import imageio_ffmpeg

        return Finding(True, "ffmpeg", imageio_ffmpeg.get_ffmpeg_exe())
    except Exception as exc:
        return Finding(False, "ffmpeg", f"not found ({exc}); reinstall imageio-ffmpeg", fatal=True)


def _database(path: Path) -> Finding:
    label = "Database (DATABASE_PATH)"
    if path.is_dir():
        return Finding(False, label, f"{path} is a folder; name a file in it", fatal=True)
    state = "exists" if path.exists() else "will be created"
    folder = _writable(label, path.parent)
    if not folder.ok:
        return folder
    if path.exists() and not os.access(path, os.W_OK):
        return Finding(False, label, f"{path} is not writable", fatal=True)
    return Finding(True, label, f"{path} ({state}, writable)")


def _writable(label: str, folder: Path) -> Finding:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return Finding(False, label, f"{folder} is not writable: {exc.strerror}", fatal=True)
    return Finding(True, label, f"{folder} (writable)")


def _free_space(
    folder: Path,
    floor_bytes: int,
    free_bytes: Callable[[Path], int | None] = free_disk_bytes,
    *,
    where: str = "DATA_DIR",
) -> Finding:
    """Room for pictures and clips: below `floor_bytes` (MIN_FREE_DISK_MB) the bot takes no new
    clips; not fatal, since what is in line still finishes and old clips are cleaned up."""
    label = "Free disk space" if where == "DATA_DIR" else f"Free disk space ({where})"
    free = free_bytes(folder)
    if free is None:
        return Finding(True, label, f"could not be told for {folder}")
    detail = f"{free / 2**30:.1f} GiB where {where} is"
    floor = f"{floor_bytes / 2**20:.0f} MiB (MIN_FREE_DISK_MB)"
    if free < floor_bytes:
        return Finding(False, label, f"{detail}: new clips are refused under {floor}; free some")
    if free < max(LOW_DISK_BYTES, 2 * floor_bytes):
        return Finding(
            False,
            label,
            f"{detail}: low; new clips are refused under {floor} (finished clips are deleted "
            "after KEEP_FILES_DAYS)",
        )
    return Finding(True, label, detail)


def compile_cache(settings: Settings) -> Finding:
    """Where the fast plan keeps compiled kernels: without it every start compiles for minutes."""
    label = "Compile cache"
    folder = settings.compile_cache_path
    if folder is None:
        return Finding(True, label, "off (COMPILE_CACHE_DIR): the fast plan compiles at each start")
    found = _writable(label, folder)
    if not found.ok:  # a slower start, not a reason to refuse one
        return Finding(False, label, found.detail + "; the fast plan will compile at each start")
    kept = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return Finding(True, label, f"{folder} (writable; {kept / 2**20:.0f} MiB of kernels kept)")


def _token(settings: Settings) -> Finding:
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        return Finding(
            False, "Discord token", "DISCORD_TOKEN is not set (see .env.example)", fatal=True
        )
    # Never print the token, not even a part of it.
    return Finding(True, "Discord token", f"set ({len(token)} characters)")

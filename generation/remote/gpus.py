"""Pinning each worker on a machine to its own GPU.

`docker compose up --scale worker=N` starts N identical containers that all see every GPU; each
takes the first GPU whose lock file (in a folder they share) no other worker holds. The lock is an
`flock`, so it goes with the process however that ends, and a restarted worker gets a GPU back.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from generation.errors import GenerationError


class NoFreeGpu(GenerationError):
    def __init__(self, count: int) -> None:
        super().__init__(
            f"Every GPU on this machine ({count}) already has a worker. "
            "Start one worker per GPU, or set WORKER_GPU to share one on purpose."
        )


class GpuLock:
    """The claim on one GPU, held while this object (and its process) lives."""

    def __init__(self, index: int, handle: IO[bytes]) -> None:
        self.index = index
        self._handle = handle

    def release(self) -> None:
        self._handle.close()


def claim_gpu(lock_dir: Path, count: int) -> GpuLock:
    """Lock the first free GPU of `count`; raises `NoFreeGpu`. (WORKER_GPU skips this.)"""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        handle = open(lock_dir / f"gpu-{index}.lock", "ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return GpuLock(index, handle)
    raise NoFreeGpu(count)

"""A real `redis-server` (Debian's package) on a free port of 127.0.0.1, for the scale-out tests.

Nothing is saved to disk; the server is stopped with the fixture. Where the binary is missing the
tests that need it are skipped with the reason (`./test.sh` installs it when it can), except in
CI, where they fail: the scale-out must not go untested unnoticed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`persist`: an append-only file synced at every write, as docker-compose.yml runs Redis,
    so that `restart()` comes back with the data (what a Redis restart in production does)."""

    def __init__(self, folder: Path, *, persist: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            why = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI"):
                pytest.fail(f"{why}; CI must run the scale-out tests")
            pytest.skip(why)
        self._binary, self._folder, self._persist = binary, folder, persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    def restart(self, down_seconds: float = 1.0) -> None:
        """Stop the server, stay down a while, start it again on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def start(self) -> None:
        appendonly = ["--appendonly", "yes", "--appendfsync", "always"] if self._persist else []
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                *appendonly,
                "--dir", str(self._folder),
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
